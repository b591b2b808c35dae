"""multispike.metrics"""
