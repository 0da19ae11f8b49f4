"""Import the built-in model modules so their ``@register_model`` decorators run."""
from landscape.models import cnn, mlp  # noqa: F401
