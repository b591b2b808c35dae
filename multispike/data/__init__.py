"""multispike.data"""
