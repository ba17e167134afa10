"""nffk.models"""
