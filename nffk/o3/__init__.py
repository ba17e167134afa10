"""Pure O(3) math with e3nn's conventions: irreps, Wigner matrices, spherical harmonics."""
from nffk.o3.rotation import (angles_to_axis_angle, angles_to_matrix, angles_to_xyz, axis_angle_to_angles,
                              axis_angle_to_matrix, compose_angles, identity_angles, inverse_angles,
                              matrix_to_angles, matrix_to_axis_angle, matrix_x, matrix_y, matrix_z,
                              rand_angles, rand_matrix, xyz_to_angles)
from nffk.o3.wigner import wigner_3j, wigner_3j_sparse, wigner_D
from nffk.o3.irreps import Irrep, Irreps, IrrepsSort, MulIr, tensor_product_irreps
# Note: this function shadows the submodule attribute of the same name; reach the module's other
# names with `from nffk.o3.spherical_harmonics import ...`.
from nffk.o3.spherical_harmonics import (SphericalHarmonicsCoefficients, spherical_harmonics,
                                         spherical_harmonics_coefficients)

__all__ = [
    "Irrep", "Irreps", "IrrepsSort", "MulIr", "tensor_product_irreps",
    "wigner_3j", "wigner_3j_sparse", "wigner_D",
    "spherical_harmonics", "spherical_harmonics_coefficients", "SphericalHarmonicsCoefficients",
    "angles_to_axis_angle", "angles_to_matrix", "angles_to_xyz", "axis_angle_to_angles",
    "axis_angle_to_matrix", "compose_angles", "identity_angles", "inverse_angles", "matrix_to_angles",
    "matrix_to_axis_angle", "matrix_x", "matrix_y", "matrix_z", "rand_angles", "rand_matrix",
    "xyz_to_angles",
]
