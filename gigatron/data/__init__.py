"""gigatron.data: corpus, tokenization, packing and the DP-size-independent batch loader."""

from gigatron.data.build import LMData, build_lm_data, make_tokenizer, resolve_files
from gigatron.data.byte_tokenizer import ByteTokenizer
from gigatron.data.corpus import default_corpus_files, resolve_cache_dir
from gigatron.data.loader import GlobalBatchLoader
from gigatron.data.packed import PackedSamples, num_samples, split_train_valid
from gigatron.data.token_file import Tokenizer, load_or_build_tokens, token_dtype

__all__ = [
    "ByteTokenizer",
    "GlobalBatchLoader",
    "LMData",
    "PackedSamples",
    "Tokenizer",
    "build_lm_data",
    "default_corpus_files",
    "load_or_build_tokens",
    "make_tokenizer",
    "num_samples",
    "resolve_cache_dir",
    "resolve_files",
    "split_train_valid",
    "token_dtype",
]
