"""Small offline stand-ins of the paper's hub models, for rehearsing the real path (issue 12).

One concept: a stand-in of a hub model (config, tokenizer kind, chat template, weights, saved
as the hub model's folder would be).

A stand-in keeps what makes the real model's code path what it is and shrinks only the sizes:

* **the architecture class and its config values**: built from a copy of the real model's public
  ``config.json`` (``standin_assets/<name>.json``): same ``architectures``/``model_type``,
  activation, norm epsilon, RoPE settings (``rope_theta``, ``rope_scaling``), attention and MLP
  biases, tied or untied head, sliding window, ``max_position_embeddings``; the GQA ratio
  ``num_attention_heads / num_key_value_heads`` and the MLP ratio
  ``intermediate_size / hidden_size`` are kept while hidden size, layers and heads shrink;
* **the tokenizer kind**, trained here with ``tokenizers`` on a small shipped corpus
  (``standin_assets/corpus.txt``): Llama-3's byte-level BPE with its pre-tokenizer split pattern
  and its special tokens appended after the BPE vocabulary (``<|begin_of_text|>`` ...
  ``<|eot_id|>``, in the real relative order, BOS added by the post-processor), or Mistral's
  SentencePiece-style BPE (``▁`` word prefix, ``<unk> <s> </s>`` then the 256 ``<0xNN>`` byte
  tokens first, byte fallback for anything unseen, BOS added by the post-processor);
* **the chat template**, written here from each family's documented prompt format:
  Llama-3 ``<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
  (generation prompt: the assistant header), Mistral-Instruct ``<s>[INST] {user} [/INST]
  {assistant}</s>`` (no system turn: like the real v0.2 template it refuses one).

The folder is an ordinary Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer
files, ``generation_config.json``) plus ``standin.json`` (what it stands in for and how it was
built), so it loads through ``AutoModelForCausalLM``/``AutoTokenizer`` -- the code path of a hub id
(``model.kind=hub model.path=<folder>``). Building is deterministic in ``seed`` and takes about a
second. ``ensure_*`` functions build a folder once and afterwards check that it was built with
the same settings.

    >>> from hhh_bench.models.standin import ensure_standin
    >>> folder = ensure_standin("llama3_8b_instruct", "runs/x/rehearsal/llama3_8b_instruct")  # doctest: +SKIP

Also here: :func:`ensure_released_specialists` (specialist folders derived from a stand-in base,
full-weight and LoRA adapter, in place of released hub specialists) and
:func:`ensure_standin_reward_model` (a sequence-classification model with ArmoRM's number of
objectives, on the Llama-3 stand-in's tokenizer, for the ``reward_model`` mixing scorer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hhh_bench.core.provenance import atomic_dir

ASSETS = Path(__file__).resolve().parent / "standin_assets"
CORPUS = ASSETS / "corpus.txt"
MANIFEST = "standin.json"
# Bumped when a change here changes what a folder holds, so old folders are rebuilt, not reused.
BUILD_VERSION = 1

# Llama-3's pre-tokenizer split pattern (the `pat_str` of Meta's tiktoken-based tokenizer, a
# published constant): contractions, letter runs with one leading non-letter, 1-3 digit groups,
# punctuation runs, newlines, spaces.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Written from Meta's documented Llama-3 prompt format: every message is a header block ended
# by <|eot_id|> (content stripped), BOS once at the start; the generation prompt is the
# assistant's header, so a rendered prompt is a prefix of the rendered prompt+answer.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)

# Written from Mistral's documented instruct format "<s>[INST] Instruction [/INST] Model
# answer</s>[INST] Follow-up instruction [/INST]": user and assistant turns must alternate,
# starting with the user; a system turn is refused, as by the real v0.2 template. There is no
# separate generation prompt: a rendered prompt ends with " [/INST]", a prefix of prompt+answer.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['user', 'assistant'] %}"
    "{{- raise_exception('Mistral-Instruct chat template: only user and assistant turns are "
    "supported, got a ' + message['role'] + ' turn (put a system prompt into the first user "
    "turn)') }}"
    "{%- endif %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Mistral-Instruct chat template: turns must alternate "
    "user/assistant/user/... starting with the user') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- else %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

_MISTRAL_BYTES = tuple(f"<0x{i:02X}>" for i in range(256))


@dataclass(frozen=True)
class Family:
    """What a stand-in copies from one real model family.

    Attributes:
        name: the stand-in's name, the ``conf/model/<name>.yaml`` of the model it stands in for.
        hub_id: the real model.
        tokenizer_kind: ``byte_level`` (Llama-3) or ``sentencepiece_bpe`` (Mistral).
        bos, eos, unk: the special tokens' strings (``eos`` as in the real ``config.json``).
        special_tokens: every special token, in the real relative id order.
        generation_eos: the tokens ``generation_config.json`` stops on.
        chat_template: the Jinja chat template.
    """

    name: str
    hub_id: str
    tokenizer_kind: str
    bos: str
    eos: str
    unk: str | None
    special_tokens: tuple[str, ...]
    generation_eos: tuple[str, ...]
    chat_template: str

    @property
    def config_asset(self) -> str:
        """The file of ``standin_assets/`` holding the real ``config.json`` values."""
        return f"{self.name}.json"


FAMILIES: dict[str, Family] = {
    "llama3_8b_instruct": Family(
        name="llama3_8b_instruct",
        hub_id="meta-llama/Meta-Llama-3-8B-Instruct",
        tokenizer_kind="byte_level",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",  # config.json's eos_token_id 128009
        unk=None,
        # ids 128000..128009 of the real tokenizer, in that order (the other 246 reserved tokens
        # are left out: nothing uses them)
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|reserved_special_token_2|>",
            "<|reserved_special_token_3|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|reserved_special_token_4|>",
            "<|eot_id|>",
        ),
        generation_eos=("<|end_of_text|>", "<|eot_id|>"),
        chat_template=LLAMA3_CHAT_TEMPLATE,
    ),
    "mistral_7b_instruct": Family(
        name="mistral_7b_instruct",
        hub_id="mistralai/Mistral-7B-Instruct-v0.2",
        tokenizer_kind="sentencepiece_bpe",
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        special_tokens=("<unk>", "<s>", "</s>"),
        generation_eos=("</s>",),
        chat_template=MISTRAL_CHAT_TEMPLATE,
    ),
}
# Short names accepted wherever a family name is (model.standin=llama3).
ALIASES = {"llama3": "llama3_8b_instruct", "mistral": "mistral_7b_instruct"}


def get_family(name: str) -> Family:
    """The family ``name`` (a key of :data:`FAMILIES` or an alias); the error lists them."""
    key = ALIASES.get(name, name)
    if key not in FAMILIES:
        raise ValueError(
            f"no stand-in for model {name!r}; stand-ins exist for {sorted(FAMILIES)} "
            f"(aliases {sorted(ALIASES)}). model.standin names the real model's conf/model entry"
        )
    return FAMILIES[key]


@dataclass(frozen=True)
class StandinSpec:
    """The sizes of a stand-in (every other config value is the real model's).

    Attributes:
        hidden_size: hidden width (the real 4096 scaled down).
        num_hidden_layers: decoder layers.
        num_attention_heads: query heads; must be a multiple of the real GQA ratio (4 for both
            families), the key/value heads are ``num_attention_heads / ratio``.
        vocab_size: target size of the trained BPE vocabulary, special tokens included (a corpus
            too small for it gives fewer).
        sliding_window: cap on the real ``sliding_window`` where the real config has one (so the
            window engages on short sequences); unused where it is null (Mistral-v0.2).
        dtype: dtype of the saved weights (the real checkpoints are bfloat16).
        seed: seed of the weight initialisation.
    """

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    vocab_size: int = 1024
    sliding_window: int = 32
    dtype: str = "bfloat16"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"stand-in spec: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"stand-in spec: hidden_size {self.hidden_size} must be divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.vocab_size < 300:
            raise ValueError(
                f"stand-in spec: vocab_size {self.vocab_size} is below the 256 byte tokens plus "
                "the special tokens; use at least 300"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"stand-in spec: dtype must be float32, bfloat16 or float16, got {self.dtype!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> StandinSpec:
        """A spec from a config mapping; an unknown key is an error naming the valid ones."""
        values = dict(values or {})
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"stand-in spec: unknown key(s) {unknown}; valid: {sorted(fields)}")
        return cls(**values)


def real_config(name: str) -> dict[str, Any]:
    """The real model's ``config.json`` values shipped for ``name`` (without ``_source``)."""
    family = get_family(name)
    data = json.loads((ASSETS / family.config_asset).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def corpus_lines(corpus: Iterable[str] | None = None) -> list[str]:
    """The tokenizer training text: ``corpus`` or the shipped ``standin_assets/corpus.txt``."""
    lines = list(corpus) if corpus is not None else CORPUS.read_text().splitlines()
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError("stand-in tokenizer: the training corpus is empty")
    return lines


def build_standin_tokenizer(
    name: str, *, vocab_size: int = 1024, corpus: Iterable[str] | None = None
) -> Any:
    """Train the family's kind of BPE tokenizer on ``corpus`` and wrap it for transformers.

    Returns:
        A ``PreTrainedTokenizerFast`` with the family's special tokens, BOS post-processor and
        chat template (no pad token: neither real tokenizer has one;
        :func:`hhh_bench.models.load_tokenizer` sets pad = eos, as for the hub models).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    family = get_family(name)
    texts = corpus_lines(corpus)
    if family.tokenizer_kind == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(family.special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        # the special tokens come after the BPE vocabulary, as ids 128000.. do in Llama-3
        tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in family.special_tokens]
        )
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{family.bos} $A",
                    pair=f"{family.bos} $A {family.bos}:1 $B:1",
                    special_tokens=[(family.bos, bos_id)],
                ),
            ]
        )
    elif family.tokenizer_kind == "sentencepiece_bpe":
        tok = Tokenizer(models.BPE(unk_token=family.unk, byte_fallback=True, fuse_unk=True))
        # as Mistral's tokenizer.json: "▁" prepended to every text segment and spaces replaced
        # by "▁" in the normalizer; split before each "▁" so merges stay within words (as
        # SentencePiece's whitespace splitting)
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="never", split=True
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            # ids 0, 1, 2 and then the 256 byte tokens, as in the real vocabulary
            special_tokens=[*family.special_tokens, *_MISTRAL_BYTES],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        # The byte tokens are ordinary vocabulary entries (reached by byte fallback), not added
        # tokens that would match "<0x41>" typed in a text: keep only <unk> <s> </s> as added.
        data = json.loads(tok.to_str())
        data["added_tokens"] = [
            t for t in data["added_tokens"] if t["content"] in family.special_tokens
        ]
        tok = Tokenizer.from_str(json.dumps(data))
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A",
            pair=f"{family.bos} $A {family.bos}:1 $B:1",
            special_tokens=[(family.bos, bos_id)],
        )
    else:  # pragma: no cover - FAMILIES is closed
        raise ValueError(f"unknown tokenizer kind {family.tokenizer_kind!r}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=family.bos,
        eos_token=family.eos,
        unk_token=family.unk,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = family.chat_template
    return fast


def scaled_config(
    real: Mapping[str, Any], spec: StandinSpec, *, vocab_size: int, bos_id: int, eos_id: int
) -> dict[str, Any]:
    """The real ``config.json`` values with the sizes of ``spec`` (see the module docstring).

    Raises:
        ValueError: ``spec.num_attention_heads`` is not a multiple of the real GQA ratio.
    """
    heads = int(real["num_attention_heads"])
    kv = int(real.get("num_key_value_heads") or heads)
    if heads % kv:
        raise ValueError(
            f"real config: {heads} attention heads are not a multiple of {kv} kv heads"
        )
    ratio = heads // kv
    if spec.num_attention_heads % ratio:
        raise ValueError(
            f"stand-in spec: num_attention_heads {spec.num_attention_heads} must be a multiple "
            f"of the real model's GQA ratio {heads}/{kv} = {ratio}"
        )
    out = {k: v for k, v in real.items() if not k.startswith("_")}
    out.update(
        hidden_size=spec.hidden_size,
        intermediate_size=round(
            spec.hidden_size * int(real["intermediate_size"]) / int(real["hidden_size"])
        ),
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads // ratio,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        torch_dtype=spec.dtype,
    )
    if out.get("sliding_window") is not None:
        out["sliding_window"] = min(int(out["sliding_window"]), spec.sliding_window)
    return out


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _corpus_hash(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def build_standin_model(name: str, spec: StandinSpec | None = None, *, tokenizer: Any) -> Any:
    """A randomly initialised model of the real architecture class, sized by ``spec``.

    Raises:
        RuntimeError: transformers built another class than the real config's
            ``architectures[0]`` (a transformers change the rehearsal must not hide).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = spec or StandinSpec()
    family = get_family(name)
    real = real_config(family.name)
    values = scaled_config(
        real,
        spec,
        vocab_size=len(tokenizer),
        bos_id=tokenizer.convert_tokens_to_ids(family.bos),
        eos_id=tokenizer.convert_tokens_to_ids(family.eos),
    )
    model_type = values.pop("model_type")
    values.pop("torch_dtype", None)
    config = AutoConfig.for_model(model_type, **values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    expected = real["architectures"][0]
    if type(model).__name__ != expected:
        raise RuntimeError(
            f"stand-in {family.name}: transformers built {type(model).__name__} from the "
            f"config, the real model is {expected}"
        )
    return model.to(_torch_dtype(spec.dtype))


def _write_generation_config(model: Any, tokenizer: Any, family: Family) -> None:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]
    gen = model.generation_config
    gen.bos_token_id = tokenizer.convert_tokens_to_ids(family.bos)
    gen.eos_token_id = ids if len(ids) > 1 else ids[0]


def _build_key(kind: str, family: Family, spec: StandinSpec, lines: Sequence[str], **extra: Any):
    return {
        "kind": kind,
        "family": family.name,
        "build_version": BUILD_VERSION,
        "spec": asdict(spec),
        "corpus_sha256": _corpus_hash(lines),
        **extra,
    }


def _check_or_none(out: Path, key: Mapping[str, Any]) -> Path | None:
    """``out`` if it is a finished folder built with ``key``; None if absent; else an error."""
    if not out.exists():
        return None
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise FileExistsError(
            f"{out} exists but is not a stand-in folder (no {MANIFEST}); remove it or point the "
            "rehearsal at another folder (rehearsal.dir)"
        )
    found = json.loads(manifest.read_text()).get("build")
    if found != dict(key):
        diff = sorted(k for k in set(found or {}) | set(key) if (found or {}).get(k) != key.get(k))
        raise ValueError(
            f"stand-in folder {out} was built with other settings (differing: {diff}); remove "
            "it to rebuild, or point the rehearsal at another folder (rehearsal.dir)"
        )
    return out


def ensure_standin(
    name: str,
    out_dir: str | Path,
    spec: StandinSpec | Mapping[str, Any] | None = None,
    *,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Build the stand-in of ``name`` into ``out_dir`` (once; atomic), or check the existing one.

    Args:
        name: the real model's ``conf/model`` name (``llama3_8b_instruct``,
            ``mistral_7b_instruct``) or an alias (``llama3``, ``mistral``).
        out_dir: the folder to create; afterwards pass it as ``model.path``.
        spec: sizes and seed (a :class:`StandinSpec` or a mapping of its fields).
        corpus: tokenizer training text (default: the shipped corpus).

    Returns:
        ``out_dir`` as a path.

    Raises:
        ValueError: ``out_dir`` holds a stand-in built with other settings.
        FileExistsError: ``out_dir`` exists and is not a stand-in folder.
    """
    family = get_family(name)
    spec = spec if isinstance(spec, StandinSpec) else StandinSpec.from_mapping(spec)
    lines = corpus_lines(corpus)
    out = Path(out_dir)
    key = _build_key("causal_lm", family, spec, lines)
    if _check_or_none(out, key):
        return out
    tok = build_standin_tokenizer(family.name, vocab_size=spec.vocab_size, corpus=lines)
    model = build_standin_model(family.name, spec, tokenizer=tok)
    _write_generation_config(model, tok, family)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _write_manifest(tmp, family, key, model, tok)
    return out


def _write_manifest(folder: Path, family: Family, key: Mapping[str, Any], model: Any, tok: Any):
    manifest = {
        "stands_in_for": family.hub_id,
        "architecture": type(model).__name__,
        "real_config": f"hhh_bench/models/standin_assets/{family.config_asset}",
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "build": dict(key),
        "note": "A small stand-in for offline rehearsals (hhh_bench.models.standin); its "
        "weights are random and its scores mean nothing.",
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ specialists

DEFAULT_SPECIALISTS: dict[str, str] = {"helpful": "full", "honest": "lora", "harmless": "full"}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ensure_released_specialists(
    base: str | Path,
    out_dir: str | Path,
    *,
    kinds: Mapping[str, str] | None = None,
    seed: int = 0,
    delta_scale: float = 0.05,
    lora_r: int = 8,
    lora_alpha: int = 16,
    dtype: str = "bfloat16",
) -> dict[str, Path]:
    """Specialist folders derived from a stand-in base, in place of released hub specialists.

    A ``full`` specialist is the base plus a seeded, heavy-tailed perturbation of every matrix
    (Student-t with 3 degrees of freedom, scaled to ``delta_scale`` times the matrix's standard
    deviation), saved as full weights in ``dtype`` (the released checkpoints are bfloat16) with
    the base's tokenizer. A ``lora`` specialist is a peft LoRA adapter (rank ``lora_r``,
    ``lora_alpha``, on every linear of a block) with seeded random ``A`` and ``B``, saved as an
    adapter folder whose ``base_model_name_or_path`` is ``base``.

    Args:
        base: a stand-in folder (:func:`ensure_standin`).
        out_dir: parent folder; each specialist goes to ``<out_dir>/<name>``.
        kinds: specialist name -> ``full`` | ``lora``, in merge order (default:
            :data:`DEFAULT_SPECIALISTS`, one LoRA adapter between two full-weight models).
        seed: seed of the perturbations (each specialist draws its own stream).

    Returns:
        specialist name -> folder, in ``kinds`` order.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kinds = dict(kinds or DEFAULT_SPECIALISTS)
    bad = {k: v for k, v in kinds.items() if v not in ("full", "lora")}
    if bad:
        raise ValueError(f"released specialists: kinds must be 'full' or 'lora', got {bad}")
    base = Path(base)
    base_manifest = base / MANIFEST
    if not base_manifest.is_file():
        raise FileNotFoundError(
            f"released specialists: {base} is not a stand-in folder (no {MANIFEST}); build it "
            "with ensure_standin first"
        )
    base_build = json.loads(base_manifest.read_text())["build"]
    out: dict[str, Path] = {}
    for i, (name, kind) in enumerate(kinds.items()):
        folder = Path(out_dir) / name
        key = {
            "kind": f"specialist_{kind}",
            "base_build": base_build,
            "build_version": BUILD_VERSION,
            "seed": seed,
            "index": i,
            **(
                {"delta_scale": delta_scale, "dtype": dtype}
                if kind == "full"
                else {"lora_r": lora_r, "lora_alpha": lora_alpha}
            ),
        }
        if _check_or_none(folder, key):
            out[name] = folder
            continue
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        with atomic_dir(folder) as tmp:
            if kind == "full":
                tok = AutoTokenizer.from_pretrained(base)
                with torch.no_grad():
                    for _, p in sorted(model.named_parameters()):
                        if p.dim() != 2:
                            continue
                        p.add_(delta_scale * p.std() * _student_t(p.shape, gen))
                model.to(_torch_dtype(dtype)).save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
                arch = type(model).__name__
            else:
                from peft import LoraConfig, get_peft_model

                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed * 1000 + i)
                    peft_model = get_peft_model(
                        model,
                        LoraConfig(
                            r=lora_r, lora_alpha=lora_alpha, target_modules=list(LORA_TARGETS)
                        ),
                    )
                with torch.no_grad():
                    for n, p in sorted(peft_model.named_parameters()):
                        if "lora_B" in n:
                            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
                peft_model.save_pretrained(tmp)
                cfg_path = tmp / "adapter_config.json"
                adapter_cfg = json.loads(cfg_path.read_text())
                adapter_cfg["base_model_name_or_path"] = str(base)
                cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")
                arch = "LoRA adapter"
            (tmp / MANIFEST).write_text(
                json.dumps(
                    {
                        "stands_in_for": f"a released {name} specialist ({kind})",
                        "architecture": arch,
                        "base": str(base),
                        "build": key,
                        "note": "A random specialist for offline rehearsals; its scores mean "
                        "nothing.",
                    },
                    indent=2,
                    sort_keys=True,
                )
                + "\n"
            )
        out[name] = folder
    return out


def _student_t(shape: Any, gen: Any, df: float = 3.0) -> Any:
    """Student-t samples from a seeded generator (normal / sqrt(chi2/df), chi2 from normals)."""
    import torch

    z = torch.randn(shape, generator=gen)
    chi2 = (torch.randn((int(df), *shape), generator=gen) ** 2).sum(0)
    return z / torch.sqrt(chi2 / df)


# ------------------------------------------------------------------------------ reward model

# ArmoRM-Llama3-8B-v0.1 returns 19 objective rewards (hhh_bench.data.mixing.scorers).
REWARD_MODEL_OUTPUTS = 19


def ensure_standin_reward_model(
    out_dir: str | Path,
    *,
    family: str = "llama3_8b_instruct",
    num_outputs: int = REWARD_MODEL_OUTPUTS,
    spec: StandinSpec | Mapping[str, Any] | None = None,
    corpus: Iterable[str] | None = None,
) -> Path:
    """A sequence-classification stand-in of a multi-objective reward model (ArmoRM-shaped).

    The real ArmoRM is Llama-3-8B with a custom gating head (remote code); the stand-in is the
    family's ``...ForSequenceClassification`` with ``num_outputs`` regression outputs on the
    family's stand-in tokenizer, which the ``reward_model`` scorer reads through ``.logits``
    (its fallback when a model has no ``.rewards``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    fam = get_family(family)
    spec = spec if isinstance(spec, StandinSpec) else StandinSpec.from_mapping(spec)
    lines = corpus_lines(corpus)
    out = Path(out_dir)
    key = _build_key("reward_model", fam, spec, lines, num_outputs=num_outputs)
    if _check_or_none(out, key):
        return out
    tok = build_standin_tokenizer(fam.name, vocab_size=spec.vocab_size, corpus=lines)
    eos_id = tok.convert_tokens_to_ids(fam.eos)
    values = scaled_config(
        real_config(fam.name),
        spec,
        vocab_size=len(tok),
        bos_id=tok.convert_tokens_to_ids(fam.bos),
        eos_id=eos_id,
    )
    model_type = values.pop("model_type")
    values.pop("torch_dtype", None)
    values.pop("architectures", None)
    config = AutoConfig.for_model(
        model_type,
        **values,
        num_labels=num_outputs,
        problem_type="regression",
        pad_token_id=eos_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForSequenceClassification.from_config(config)
    model = model.to(_torch_dtype(spec.dtype))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _write_manifest(tmp, fam, key, model, tok)
    return out
