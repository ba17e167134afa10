"""nffk.nn"""
