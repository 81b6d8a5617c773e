"""The single-process inference engine shared by every node role."""

from splitserve.engine.config import EngineConfig, ModelConfig
from splitserve.engine.engine import Engine, EngineStats
from splitserve.engine.errors import ModelFormatError
from splitserve.engine.output import Completion, RequestOutput
from splitserve.engine.pooling import Pooling, PoolingParams
from splitserve.engine.sampling import SamplingParams
from splitserve.engine.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = ["Completion", "Engine", "EngineConfig", "EngineStats", "IncrementalDetokenizer", "ModelConfig",
           "ModelFormatError", "Pooling", "PoolingParams", "RequestOutput", "SamplingParams", "Tokenizer"]
