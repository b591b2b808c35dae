"""multispike.models"""
