"""multispike.export"""
