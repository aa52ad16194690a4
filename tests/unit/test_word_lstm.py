"""word_lstm: Reddi et al. 2021's Stack Overflow next-word LSTM as TFF builds it in Keras (one bias per gate, Keras'
initialisation), on the data's vocabulary and sequence length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedscape.data.specs import DATASETS, IGNORE_INDEX
from fedscape.models.loss import mean_loss
from fedscape.models.registry import build_model
from fedscape.models.tokens import KerasLSTMLayer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"embed_dim": 6, "hidden_size": 7}


def test_the_stackoverflow_model_has_the_keras_parameter_count():
    # Prepare / Execute
    info = DATASETS["stackoverflow"]
    model = build_model("word_lstm", info.num_classes, info.in_channels, info.image_size)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}

    # Assert: Keras' summary of TFF's model (one LSTM bias per gate): 4,050,748 in all
    assert counts == {"embedding": 10_004 * 96, "lstm": 4 * (670 * (96 + 670) + 670), "projection": 670 * 96 + 96,
                      "classifier": 96 * 10_004 + 10_004}
    assert sum(counts.values()) == 4_050_748


@pytest.mark.parametrize("dataset", ["stackoverflow", "reddit"])
def test_vocabulary_and_sequence_length_are_the_datas(dataset):
    # Prepare
    info = DATASETS[dataset]

    # Execute
    model = build_model("word_lstm", info.num_classes, info.in_channels, info.image_size, targets="every")

    # Assert
    assert model.embedding.num_embeddings == model.classifier.out_features == info.num_classes
    assert model.seq_len == info.image_size
    x = torch.randint(0, info.in_channels, (2, info.image_size), generator=torch.Generator().manual_seed(0))
    assert model(x).shape == (2, info.num_classes, info.image_size)


def test_a_vocabulary_other_than_the_datas_is_refused():
    with pytest.raises(ValueError, match="vocab_size 50 but the data has a vocabulary of 10000"):
        build_model("word_lstm", 10_000, 10_000, 10, vocab_size=50)


def test_the_keras_lstm_layer_computes_what_nn_lstm_computes(float64_default):
    # Prepare: nn.LSTM with Keras' single bias as bias_ih and a zero bias_hh
    layer = KerasLSTMLayer(5, 4)
    with torch.no_grad():
        layer.bias.normal_(generator=torch.Generator().manual_seed(1))
    reference = nn.LSTM(5, 4, batch_first=True)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(layer.weight_ih)
        reference.weight_hh_l0.copy_(layer.weight_hh)
        reference.bias_ih_l0.copy_(layer.bias)
        reference.bias_hh_l0.zero_()
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(2))

    # Execute / Assert
    torch.testing.assert_close(layer(x), reference(x)[0], rtol=1e-12, atol=1e-12)


def test_the_model_equals_an_independent_construction_at_every_position(float64_default):
    # Prepare: embedding, nn.LSTM, two Linear layers holding the model's weights
    torch.manual_seed(0)
    model = build_model("word_lstm", 30, 30, 8, targets="every", **SMALL)
    lstm = nn.LSTM(6, 7, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(model.lstm.weight_ih)
        lstm.weight_hh_l0.copy_(model.lstm.weight_hh)
        lstm.bias_ih_l0.copy_(model.lstm.bias)
        lstm.bias_hh_l0.zero_()
    x = torch.randint(0, 30, (4, 8), generator=torch.Generator().manual_seed(3))

    # Execute
    h = lstm(F.embedding(x, model.embedding.weight))[0]
    want = F.linear(F.linear(h, model.projection.weight, model.projection.bias), model.classifier.weight,
                    model.classifier.bias)

    # Assert: logits [B, vocab, T]; the next-token model's are the last position's
    torch.testing.assert_close(model(x), want.transpose(1, 2), rtol=1e-12, atol=1e-12)
    last = build_model("word_lstm", 30, 30, 8, **SMALL)
    last.load_state_dict(model.state_dict())
    torch.testing.assert_close(last(x), want[:, -1], rtol=1e-12, atol=1e-12)


def test_initialisation_follows_keras(float64_default):
    # Prepare / Execute
    torch.manual_seed(5)
    model = build_model("word_lstm", 200, 200, 20, embed_dim=16, hidden_size=24)
    torch.manual_seed(5)
    again = build_model("word_lstm", 200, 200, 20, embed_dim=16, hidden_size=24)

    # Assert: forget-gate bias 1, the others 0; the recurrent kernel orthogonal; Glorot bounds; embedding 0.05
    h = 24
    bias = model.lstm.bias.detach()
    assert torch.equal(bias[h:2 * h], torch.ones(h)) and not bias[:h].any() and not bias[2 * h:].any()
    w_hh = model.lstm.weight_hh.detach()
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(h), rtol=0, atol=1e-5)
    assert float(model.lstm.weight_ih.detach().abs().max()) <= (6 / (16 + 4 * h)) ** 0.5
    assert float(model.embedding.weight.detach().abs().max()) <= 0.05
    assert not model.projection.bias.any() and not model.classifier.bias.any()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                  strict=True))


def test_second_derivatives_exist_for_the_hessian_analyses(float64_default):
    # Prepare: a tiny model and every-position targets with padding that does not count
    torch.manual_seed(1)
    model = build_model("word_lstm", 12, 12, 5, targets="every", embed_dim=3, hidden_size=4)
    x = torch.randint(0, 12, (3, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 12, (3, 5), generator=torch.Generator().manual_seed(1))
    y[:, -2:] = IGNORE_INDEX
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]

    # Execute: the Hessian-vector product by double backward, and by finite differences of the gradient
    def grads(shift: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(shift * d)
        g = torch.autograd.grad(mean_loss(model(x), y), params)
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.sub_(shift * d)
        return g

    g = torch.autograd.grad(mean_loss(model(x), y), params, create_graph=True)
    hv = torch.autograd.grad(g, params, grad_outputs=v)
    eps = 1e-5
    fd = [(a - b) / (2 * eps) for a, b in zip(grads(eps), grads(-eps), strict=True)]

    # Assert
    for a, b in zip(hv, fd, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
