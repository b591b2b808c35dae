"""multispike.convert"""
