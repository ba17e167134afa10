"""nffk.data"""
