"""nffk.train"""
