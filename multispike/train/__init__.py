"""multispike.train"""
