"""multispike.cli"""
