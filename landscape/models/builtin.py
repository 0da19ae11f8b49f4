"""Import the built-in model modules so their ``@register_model`` decorators run."""
from landscape.models import cnn, lstm_lm, mlp, resnet, textcnn, vit, wide_resnet  # noqa: F401
