"""Drop-in torch modules with e3nn's constructors and conventions; arithmetic lives in nffk.ops."""
from nffk.nn.conv import EquivariantConv  # noqa: F401
from nffk.nn.convert import from_e3nn  # noqa: F401
from nffk.nn.gate import Gate, NormalizedActivation  # noqa: F401
from nffk.nn.linear import Linear  # noqa: F401
from nffk.nn.mlp import DenseLayer, FullyConnectedNet  # noqa: F401
from nffk.nn.radial import BesselBasis, PolynomialCutoff, RadialEmbedding  # noqa: F401
from nffk.nn.spherical_harmonics import SphericalHarmonics  # noqa: F401
from nffk.nn.tensor_product import ChannelwiseTensorProduct, FullyConnectedTensorProduct, TensorProduct  # noqa: F401
