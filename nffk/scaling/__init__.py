"""nffk.scaling"""
