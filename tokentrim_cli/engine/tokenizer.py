"""A word-level tokenizer built in code, for tiny test models and the toy world (no files, no downloads).

Ids: 0 = <pad>, 1 = </s> (appended to every prompt, like T5), 2 = <unk>, then the vocabulary in order.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BASE_VOCAB = (
    "a an the of on in with and at over under to from is are small large big tiny red green blue yellow orange "
    "purple pink white black gray grey brown cyan magenta dark light bright pale circle square triangle star "
    "ring diamond cross box ball shape shapes object objects moving moves bouncing bounces rotating spinning "
    "growing shrinking sliding floating falling left right up down slowly quickly background plain gradient "
    "textured striped checkered sky sea water field city street forest night day sunset cat dog person car "
    "bird tree mountain river ocean camera view close wide shot video scene"
).split()


def word_tokenizer(vocab: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-splitting word-level tokenizer (ids in the module docstring).

    Args:
        vocab: the words, in id order (None: ``BASE_VOCAB``); duplicates are dropped.
    """
    words = list(dict.fromkeys(vocab or BASE_VOCAB))
    table = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        table.setdefault(w, len(table))
    tok = Tokenizer(models.WordLevel(table, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
