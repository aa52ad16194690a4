"""Token models: character-level language models (char_gpt, char_lstm), the word-level LSTM of Reddi et al. 2021
(word_lstm), and char_gpt's permutation spec.

Inputs are int64 character ids [B, T]; ``forward`` returns the logits [B, vocab] of the character after the
sequence (the last position's prediction), so training and evaluation treat them as classifiers over the
vocabulary. ``forward_all`` gives every position's logits [B, T, vocab]. Built with ``every_position=True`` (a data
set's ``targets: every``), ``forward`` returns every position's logits as a sequence task's [B, vocab, T], the class
dimension second (`fedscape.models.loss`), as the layer-wise LMC authors train their GPT (Adilova et al. 2023; their
training follows nanoGPT's: the targets are the input shifted by one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedscape.core.names import unknown_name_error
from fedscape.models.layers import ImageClassifier
from fedscape.models.permutation import Axes, UnsupportedModelError, whole
from fedscape.models.specs import CHAR_GPT_BIAS, CHAR_GPT_TIE_HEAD, CHAR_LSTM_CELLS, NO_PERMUTATION_SPEC

GPT_INIT_STD = 0.02  # nanoGPT / GPT-2 initialisation of every Linear and Embedding weight
# What TensorFlow's BasicLSTMCell adds to the forget gate's pre-activation at every step: its `forget_bias` argument,
# a constant outside the parameters, at its default 1.0 in LEAF's Shakespeare model.
TF_FORGET_BIAS = 1.0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017; nanoGPT's CausalSelfAttention).

    ``c_attn`` stacks the query, key and value projections (rows q | k | v, head h at rows
    h*head_dim..(h+1)*head_dim-1 of each); ``c_proj`` mixes the concatenated heads; both with biases where
    ``bias``. The attention is written out (no fused kernel) so that it is twice differentiable everywhere (Hessian
    analyses) and runs under vmap; the causal mask is built per call rather than kept as a buffer, so the model's
    only tensors are parameters.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = CHAR_GPT_BIAS) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.c_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        h = self.num_heads
        q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // h))
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = F.softmax(att.masked_fill(future, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, c))


class GPTMLP(nn.Module):
    """Position-wise feed-forward network of a GPT block: Linear(d, 4d), GELU, Linear(4d, d) (nanoGPT's MLP), with
    biases where ``bias``."""

    def __init__(self, embed_dim: int, bias: bool = CHAR_GPT_BIAS) -> None:
        super().__init__()
        self.c_fc = nn.Linear(embed_dim, 4 * embed_dim, bias=bias)
        self.c_proj = nn.Linear(4 * embed_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)) (Radford et al. 2019; nanoGPT), its
    LayerNorms and Linear layers with biases where ``bias``."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = CHAR_GPT_BIAS) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed_dim, bias=bias)
        self.attn = CausalSelfAttention(embed_dim, num_heads, bias)
        self.ln_2 = nn.LayerNorm(embed_dim, bias=bias)
        self.mlp = GPTMLP(embed_dim, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TokenModel(ImageClassifier):
    """A character model: the logits of the character after the sequence [B, vocab], or, with `every_position`,
    the logits of every position [B, vocab, T] (position t predicts token t + 1)."""

    every_position: bool = False

    def forward_all(self, x: Tensor) -> Tensor:
        """Logits of every position, [B, T, vocab]."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.every_position:
            return self.forward_all(x).transpose(1, 2)
        return self.classifier(self.forward_features(x))


class CharGPT(TokenModel):
    """Character-level GPT of the layer-wise LMC paper's appendix (Adilova et al. 2023), nanoGPT's architecture.

    Token and learned position embeddings, ``num_blocks`` pre-LayerNorm blocks, a final LayerNorm and a
    linear head without bias (``classifier``). No dropout (fedscape's models are deterministic). Weights are drawn
    N(0, 0.02), the residual projections N(0, 0.02 / sqrt(2 num_blocks)), as in nanoGPT. ``bias``
    (`fedscape.models.specs.CHAR_GPT_BIAS`): False, the default, no Linear layer or LayerNorm has a bias, as the
    authors' llm-baselines GPT and nanoGPT's train.py default (`bias = False`; its LayerNorm with bias=False is
    nn.LayerNorm's); True, every one but the head's has one, starting at zero: the model before the option, drawing
    the same weights for a seed. Its layers are the same modules either way (the layer-wise analyses' layers,
    `fedscape.analysis.barriers.maths.model_layers`).

    ``tie_head`` (`fedscape.models.specs.CHAR_GPT_TIE_HEAD`): True, the token embedding is the head's weight, one
    tensor, as nanoGPT's and the authors' llm-baselines GPT tie them (models/base.py, `wte.weight = lm_head.weight`).
    The tensor is registered once, as ``classifier.weight`` at the output end (there is no ``wte`` module), so that
    the flat vectors, the permutation spec and the layer-wise analyses hold it once, in the last layer, where the
    authors' layer-wise code puts it: LLMC/get_llm.py averages one state-dict key's layer and loads the result, in
    which ``lm_head.weight``, loaded after ``transformer.wte.weight``, sets the shared tensor, so their layer
    ``lm_head`` averages it and their ``transformer-wte`` changes nothing (Fig. 12's barrier of "the last layer
    transforming embedding into vocabulary"). Drawn once, N(0, 0.02), as their lm_head's draw, the last, sets it;
    undecayed, as theirs (`no_weight_decay`). Pretrained init's new head (`fedscape.stages.init`) is then a new
    embedding too. False, the default: a token embedding ``wte`` of its own, the model before the option, drawing
    the same weights for a seed; MOON's projection head, which moves the head off the model or replaces it, needs it.
    """

    def __init__(self, vocab_size: int, seq_len: int, num_blocks: int, num_heads: int, embed_dim: int,
                 every_position: bool = False, bias: bool = CHAR_GPT_BIAS,
                 tie_head: bool = CHAR_GPT_TIE_HEAD) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.every_position = every_position
        self.tie_head = tie_head
        if not tie_head:
            self.wte = nn.Embedding(vocab_size, embed_dim)
        self.wpe = nn.Embedding(seq_len, embed_dim)
        self.blocks = nn.ModuleList(GPTBlock(embed_dim, num_heads, bias) for _ in range(num_blocks))
        self.ln_f = nn.LayerNorm(embed_dim, bias=bias)
        self.classifier = nn.Linear(embed_dim, vocab_size, bias=False)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                std = GPT_INIT_STD / math.sqrt(2 * num_blocks) if name.endswith("c_proj") else GPT_INIT_STD
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def hidden_states(self, x: Tensor) -> Tensor:
        """The residual stream after the last block, [B, T, embed_dim] (before ln_f)."""
        t = x.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len {self.seq_len}")
        tokens = F.embedding(x, self.classifier.weight) if self.tie_head else self.wte(x)
        h = tokens + self.wpe(torch.arange(t, device=x.device))
        for block in self.blocks:
            h = block(h)
        return h

    def forward_features(self, x: Tensor) -> Tensor:
        return self.ln_f(self.hidden_states(x)[:, -1])

    def forward_all(self, x: Tensor) -> Tensor:
        """Logits of every position, [B, T, vocab] (position t predicts token t + 1)."""
        return self.classifier(self.ln_f(self.hidden_states(x)))

    def no_weight_decay(self) -> list[str]:
        """The parameters weight decay leaves alone (`fedscape.models.specs.NO_DECAY_MODELS`): all but the Linear
        layers' weights, so every bias, the LayerNorm gains and both embeddings. So the GPT of epfml/llm-baselines,
        on which the layer-wise LMC authors' code builds (Adilova et al. 2023), groups the parameters of every
        optimiser it builds (models/base.py, get_parameter_group_specs: Linear weights decay; biases, LayerNorm and
        Embedding weights do not; nanoGPT's configure_optimizers until May 2023 too, which since decays every 2-D
        tensor, the embeddings included). Their head is the token embedding (tied), so undecayed (their
        `decay.remove('lm_head.weight')`), as the head is with ``tie_head``; an untied head is a Linear layer of its
        own and decays as their other Linear weights."""
        linear = {f"{name}.weight" for name, module in self.named_modules() if isinstance(module, nn.Linear)}
        if self.tie_head:
            linear.remove("classifier.weight")
        return [name for name, _ in self.named_parameters() if name not in linear]

    def permutation_axes(self, axes: Axes) -> None:
        """The residual stream, each block's MLP hidden units and attention heads (Ainsworth et al. 2023, Git Re-Basin).

        One permutation of the embedding dimension acts on the whole residual stream (embeddings, every LayerNorm,
        the blocks' input and output projections, the head's inputs): LayerNorm commutes with it (mean and variance
        are permutation invariant, its gain and bias are permuted with the features), and so do the residual sums.
        The token embedding and the head both hold a character's row of the stream's features, so a head tied to
        the embedding (``tie_head``) is one tensor of the same axes, permuted once.
        A block's heads can be reordered as wholes: the query, key and value rows of head h (``c_attn`` viewed as
        (q|k|v, head, head_dim, in), its bias where it has one as (q|k|v, head, head_dim)) and the inputs of
        ``c_proj`` from head h (viewed as (out, head, head_dim)) move together. Permutations of the dimensions inside
        a head (shared by its query and key, another for its value) are symmetries too but are not used: they act on
        the same axis of ``c_attn`` as the head permutation.
        """
        dim = self.wpe.embedding_dim
        stream = whole("stream", dim)
        if not self.tie_head:
            axes.entries["wte.weight"] = (None, stream)
        axes.entries["wpe.weight"] = (None, stream)

        def layer_norm(name: str, module: nn.Module) -> None:
            if not isinstance(module, nn.LayerNorm) or module.normalized_shape != (dim,):
                raise UnsupportedModelError(f"{name}: expected LayerNorm({dim}), got {module}")
            for tensor, _ in module.named_parameters(recurse=False):
                axes.entries[f"{name}.{tensor}"] = (stream,)

        for i, block in enumerate(self.blocks):
            name = f"blocks.{i}"
            if type(block) is not GPTBlock:
                raise UnsupportedModelError(f"{name}: unsupported transformer block {type(block).__name__}")
            heads = block.attn.num_heads
            head_dim = dim // heads
            head = whole(f"{name}.attn.heads", heads)
            layer_norm(f"{name}.ln_1", block.ln_1)
            axes.views[f"{name}.attn.c_attn.weight"] = (3, heads, head_dim, dim)
            axes.entries[f"{name}.attn.c_attn.weight"] = (None, head, None, stream)
            if block.attn.c_attn.bias is not None:
                axes.views[f"{name}.attn.c_attn.bias"] = (3, heads, head_dim)
                axes.entries[f"{name}.attn.c_attn.bias"] = (None, head, None)
            axes.views[f"{name}.attn.c_proj.weight"] = (dim, heads, head_dim)
            axes.entries[f"{name}.attn.c_proj.weight"] = (stream, head, None)
            if block.attn.c_proj.bias is not None:
                axes.entries[f"{name}.attn.c_proj.bias"] = (stream,)
            layer_norm(f"{name}.ln_2", block.ln_2)
            hidden = whole(f"{name}.mlp", block.mlp.c_fc.out_features)
            axes.weights(f"{name}.mlp.c_fc", block.mlp.c_fc, hidden, stream)
            axes.weights(f"{name}.mlp.c_proj", block.mlp.c_proj, stream, hidden)
        layer_norm("ln_f", self.ln_f)
        axes.weights("classifier", self.classifier, None, stream)



class LSTMLayer(nn.Module):
    """One LSTM layer (Hochreiter & Schmidhuber 1997) with nn.LSTM's parameters, gates and initialisation.

    ``weight_ih`` [4H, in], ``weight_hh`` [4H, H], ``bias_ih``, ``bias_hh`` hold the gates in nn.LSTM's
    order (input, forget, cell, output) and the layer computes what a one-layer nn.LSTM computes
    (tests/unit/test_text_models.py checks it). It is written out step by step because cuDNN's fused
    LSTM has no double backward and no backward in eval mode, which the Hessian analyses need, and
    because the step-wise form runs under vmap.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def gate_bias(self) -> Tensor:
        """The bias added to the gates' input part (nn.LSTM's two biases summed)."""
        return self.bias_ih + self.bias_hh

    def forward(self, x: Tensor) -> Tensor:
        """Outputs h_t of every step, [B, T, H], from zero initial states, for inputs [B, T, in]."""
        b, t, _ = x.shape
        gates_x = F.linear(x, self.weight_ih, self.gate_bias())  # every step's input part at once
        h = x.new_zeros(b, self.hidden_size)
        c = x.new_zeros(b, self.hidden_size)
        outputs = []
        for step in range(t):
            i, f, g, o = (gates_x[:, step] + F.linear(h, self.weight_hh)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class OneBiasLSTMLayer(LSTMLayer):
    """An LSTM layer with one bias per gate (``bias``, [4H], zero) where nn.LSTM has two, as TensorFlow's cells
    have: its subclasses draw the weights as their framework does."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        nn.Module.__init__(self)
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))

    def gate_bias(self) -> Tensor:
        return self.bias


class BasicLSTMLayer(OneBiasLSTMLayer):
    """One LSTM layer as TensorFlow 1's BasicLSTMCell computes it (tf.contrib.rnn.BasicLSTMCell, the cell of LEAF's
    Shakespeare model): one bias per gate (``bias``, [4H]) where nn.LSTM has two, initialised to zero, and a constant
    forget bias added inside the forget gate's sigmoid at every step, f = sigmoid(W_f x + U_f h + b_f + 1)
    (`TF_FORGET_BIAS`, no parameter; Keras' unit_forget_bias, `KerasLSTMLayer`, instead starts the bias parameter at
    1). Its kernel is one [in + H, 4H] matrix over the concatenated input and state, drawn Glorot-uniform (TF1's
    default initializer of a variable created without one), so ``weight_ih`` and ``weight_hh``, its two parts
    transposed, share the bound sqrt(6 / (in + 5H)). The gates are stored in nn.LSTM's order (input, forget, cell,
    output) where TF's kernel has (input, cell, forget, output): a fixed reordering of the rows, under which the
    i.i.d. draw and the function are the same."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        bound = math.sqrt(6.0 / (input_size + hidden_size + 4 * hidden_size))  # Glorot over the [in + H, 4H] kernel
        for weight in (self.weight_ih, self.weight_hh):
            nn.init.uniform_(weight, -bound, bound)

    def gate_bias(self) -> Tensor:
        i, f, g, o = self.bias.chunk(4)
        return torch.cat([i, f + TF_FORGET_BIAS, g, o])


class CharLSTM(TokenModel):
    """LEAF's Shakespeare model (Caldas et al. 2018): embedding, two stacked LSTM layers, linear head on the last step.

    ``cell`` (`fedscape.models.specs.CHAR_LSTM_CELLS`): "leaf", the model as LEAF's TensorFlow code builds it
    (models/shakespeare/stacked_lstm.py): `BasicLSTMLayer`s, the embedding and the dense head's kernel Glorot-uniform
    (the defaults of tf.get_variable and tf.layers.dense), the head's bias zero; 817,872 parameters over LEAF's 80
    characters. "torch": nn.LSTM's layers (`LSTMLayer`, two biases per gate, whose sum alone acts) and PyTorch's
    default init of every layer, 819,920 parameters: the model before the option, drawing the same weights for a
    seed. The two layers are two modules (``lstm.0``, ``lstm.1``) so that each is a layer of the layer-wise
    analyses; with the torch cell together they compute a two-layer nn.LSTM.
    """

    no_permutation_spec = NO_PERMUTATION_SPEC["char_lstm"]  # why weight matching cannot align it

    def __init__(self, vocab_size: int, seq_len: int, embed_dim: int, hidden_size: int,
                 every_position: bool = False, cell: str = CHAR_LSTM_CELLS[0]) -> None:
        super().__init__()
        if cell not in CHAR_LSTM_CELLS:
            raise unknown_name_error("LSTM cell", cell, CHAR_LSTM_CELLS)
        layer = BasicLSTMLayer if cell == "leaf" else LSTMLayer
        self.seq_len = seq_len
        self.every_position = every_position
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.ModuleList([layer(embed_dim, hidden_size), layer(hidden_size, hidden_size)])
        self.classifier = nn.Linear(hidden_size, vocab_size)
        if cell == "leaf":  # TF's Glorot-uniform defaults, where the torch cell keeps PyTorch's
            nn.init.xavier_uniform_(self.embedding.weight)
            nn.init.xavier_uniform_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)

    def hidden_states(self, x: Tensor) -> Tensor:
        """The last LSTM layer's outputs at every step, [B, T, hidden_size]."""
        h = self.embedding(x)
        for layer in self.lstm:
            h = layer(h)
        return h

    def forward_features(self, x: Tensor) -> Tensor:
        return self.hidden_states(x)[:, -1]

    def forward_all(self, x: Tensor) -> Tensor:
        """Logits of every position, [B, T, vocab] (position t predicts token t + 1)."""
        return self.classifier(self.hidden_states(x))



class KerasLSTMLayer(OneBiasLSTMLayer):
    """One LSTM layer as Keras builds it (tf.keras.layers.LSTM): one bias per gate (``bias``, [4H]) where nn.LSTM has
    two, gates in the same order (input, forget, cell, output), and Keras' initialisation: Glorot-uniform input
    kernel, orthogonal recurrent kernel, zero bias but the forget gate's at 1 (``unit_forget_bias``). The weights
    are stored transposed from Keras' ([4H, in] and [4H, H], as nn.LSTM's), so ``weight_hh``'s columns are
    orthonormal where Keras' recurrent kernel [H, 4H] has orthonormal rows."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        nn.init.xavier_uniform_(self.weight_ih)  # Glorot over fan_in = in, fan_out = 4H, as Keras' [in, 4H] kernel
        nn.init.orthogonal_(self.weight_hh)
        with torch.no_grad():
            self.bias[hidden_size : 2 * hidden_size] = 1.0


class WordLSTM(TokenModel):
    """The Stack Overflow next-word model of Reddi et al. 2021 (Adaptive Federated Optimization, App. C; TFF's
    ``create_recurrent_model``): a word embedding (96), one LSTM layer (670 units), a dense projection back to the
    embedding width and a dense layer to the vocabulary's logits, at every position.

    Keras' layers and initialisation: ``KerasLSTMLayer`` (one bias per gate), Dense layers Glorot-uniform with zero
    bias, the embedding uniform in [-0.05, 0.05]; 4,050,748 parameters over Stack Overflow's 10,004 ids. Keras
    masks the padding id in the LSTM (``mask_zero``): padding comes only after a sequence's end token, where no
    target counts (-100), so the positions that count see the same states without a mask. Deterministic, so
    without dropout, like every model of the registry.
    """

    no_permutation_spec = NO_PERMUTATION_SPEC["word_lstm"]  # why weight matching cannot align it

    def __init__(self, vocab_size: int, seq_len: int, embed_dim: int, hidden_size: int,
                 every_position: bool = False) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.every_position = every_position
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = KerasLSTMLayer(embed_dim, hidden_size)
        self.projection = nn.Linear(hidden_size, embed_dim)
        self.classifier = nn.Linear(embed_dim, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        for layer in (self.projection, self.classifier):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def hidden_states(self, x: Tensor) -> Tensor:
        """The projected LSTM outputs at every step, [B, T, embed_dim]."""
        return self.projection(self.lstm(self.embedding(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.hidden_states(x)[:, -1]

    def forward_all(self, x: Tensor) -> Tensor:
        """Logits of every position, [B, T, vocab] (position t predicts token t + 1)."""
        return self.classifier(self.hidden_states(x))
