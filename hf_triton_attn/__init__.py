from .functional import attention
