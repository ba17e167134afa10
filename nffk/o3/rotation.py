"""Rotations of 3D space in e3nn's conventions.

Euler angles are (alpha, beta, gamma) with R = Ry(alpha) Rx(beta) Ry(gamma): gamma about Y is
applied first, then beta about X, then alpha about Y. Y is the polar axis: the direction with
angles (alpha, beta) is R(alpha, beta, 0) e_y = (sin b sin a, cos b, sin b cos a).
Every function accepts any batch shape `(...)`.
"""
import math

import torch


def _as_float(*angles):
    tensors = [torch.as_tensor(a) for a in angles]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return torch.broadcast_tensors(*[t.to(dtype) for t in tensors])


def _rotation_about(angle: torch.Tensor, axis: int) -> torch.Tensor:
    """Right-handed rotation by `angle` about coordinate `axis` (0 = x, 1 = y, 2 = z), [..., 3, 3]."""
    (angle,) = _as_float(angle)
    c, s = angle.cos(), angle.sin()
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]  # the plane rotated: i -> j
    rows = [[zero] * 3 for _ in range(3)]
    rows[axis][axis] = one
    rows[i][i], rows[i][j] = c, -s
    rows[j][i], rows[j][j] = s, c
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def matrix_x(angle: torch.Tensor) -> torch.Tensor:
    """Rotation about the X axis, [..., 3, 3]."""
    return _rotation_about(angle, 0)


def matrix_y(angle: torch.Tensor) -> torch.Tensor:
    """Rotation about the Y axis, [..., 3, 3]."""
    return _rotation_about(angle, 1)


def matrix_z(angle: torch.Tensor) -> torch.Tensor:
    """Rotation about the Z axis, [..., 3, 3]."""
    return _rotation_about(angle, 2)


def angles_to_matrix(alpha, beta, gamma) -> torch.Tensor:
    """R = Ry(alpha) Rx(beta) Ry(gamma), [..., 3, 3]."""
    alpha, beta, gamma = _as_float(alpha, beta, gamma)
    return matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)


def angles_to_xyz(alpha, beta) -> torch.Tensor:
    """Point of the unit sphere R(alpha, beta, 0) e_y = (sin b sin a, cos b, sin b cos a)."""
    alpha, beta = _as_float(alpha, beta)
    return torch.stack([beta.sin() * alpha.sin(), beta.cos(), beta.sin() * alpha.cos()], dim=-1)


def xyz_to_angles(xyz: torch.Tensor):
    """(alpha, beta) of the direction `xyz` [..., 3] (the zero vector gives (0, pi/2))."""
    xyz = torch.nn.functional.normalize(xyz, dim=-1).clamp(-1, 1)
    beta = torch.acos(xyz[..., 1])
    alpha = torch.atan2(xyz[..., 0], xyz[..., 2])
    return alpha, beta


def matrix_to_angles(R: torch.Tensor):
    """Euler angles (alpha, beta, gamma) of the rotation matrix `R` [..., 3, 3] (det must be +1)."""
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {tuple(R.shape)}")
    det = torch.det(R)
    if not torch.allclose(det, torch.ones_like(det), atol=1e-4 if R.dtype == torch.float32 else 1e-8):
        raise ValueError("R must be a proper rotation (det R = +1); use Irreps.D_from_matrix for "
                         "reflections, which splits off the inversion")
    # alpha, beta locate the image of the polar axis; gamma is what remains once they are undone.
    alpha, beta = xyz_to_angles(R[..., :, 1])
    rest = angles_to_matrix(alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2) @ R
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


def identity_angles(*shape, requires_grad: bool = False, dtype=None, device=None):
    """Angles (0, 0, 0) of the identity, each of shape `shape`."""
    return tuple(torch.zeros(shape, dtype=dtype, device=device).requires_grad_(requires_grad) for _ in range(3))


def rand_angles(*shape, requires_grad: bool = False, dtype=None, device=None, generator=None):
    """Euler angles of rotations drawn uniformly (Haar measure) from SO(3)."""
    alpha, gamma = 2 * math.pi * torch.rand(2, *shape, dtype=dtype, device=device, generator=generator)
    # cos(beta) uniform on [-1, 1] makes the polar axis uniform on the sphere.
    beta = torch.rand(shape, dtype=dtype, device=device, generator=generator).mul(2).sub(1).acos()
    return tuple(a.detach().requires_grad_(requires_grad) for a in (alpha, beta, gamma))


def rand_matrix(*shape, requires_grad: bool = False, dtype=None, device=None, generator=None):
    """Uniformly random rotation matrices, [*shape, 3, 3]."""
    R = angles_to_matrix(*rand_angles(*shape, dtype=dtype, device=device, generator=generator))
    return R.detach().requires_grad_(requires_grad)


def compose_angles(a1, b1, c1, a2, b2, c2):
    """Angles of R(a1, b1, c1) @ R(a2, b2, c2) (the second rotation is applied first)."""
    a1, b1, c1, a2, b2, c2 = _as_float(a1, b1, c1, a2, b2, c2)
    return matrix_to_angles(angles_to_matrix(a1, b1, c1) @ angles_to_matrix(a2, b2, c2))


def inverse_angles(a, b, c):
    """Angles of the inverse rotation."""
    return -c, -b, -a


def axis_angle_to_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by `angle` about `axis` [..., 3] (right-handed), [..., 3, 3]."""
    axis, angle = _as_float(axis, torch.as_tensor(angle)[..., None])
    alpha, beta = xyz_to_angles(axis)
    # Bring Y onto the axis, rotate about Y, bring it back.
    frame = angles_to_matrix(alpha, beta, torch.zeros_like(beta))
    return frame @ matrix_y(angle[..., 0]) @ frame.transpose(-1, -2)


def matrix_to_axis_angle(R: torch.Tensor):
    """(axis [..., 3], angle in [0, pi]) of the rotation matrix `R`."""
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    angle = torch.acos(((trace - 1) / 2).clamp(-1, 1))
    axis = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
                       dim=-1)
    return torch.nn.functional.normalize(axis, dim=-1), angle


def axis_angle_to_angles(axis: torch.Tensor, angle: torch.Tensor):
    return matrix_to_angles(axis_angle_to_matrix(axis, angle))


def angles_to_axis_angle(alpha, beta, gamma):
    return matrix_to_axis_angle(angles_to_matrix(alpha, beta, gamma))
