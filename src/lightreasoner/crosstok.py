"""An amateur with another tokenizer: both models read the same *text* (sampling's text path; the design page).

The id path compares the two models' next-token distributions id for id, so it needs one tokenizer. The text path
compares them on the same text instead. Symbols: the expert's completion ``y_1..y_T`` (ids in ``V_E``), the
amateur's vocabulary ``V_A``, step ``t`` = predicting ``y_t`` from ``y_<t``.

**Prompts.** Each model reads its own chat template around the same question and system prompt
(:func:`prompts.build_prompt_ids` with its own tokenizer).

**Text pieces and groups.** The expert's completion is cut into text: the piece of ``y_t`` is ``decode(y_<=t)``
minus ``decode(y_<t)`` (expert tokenizer, special tokens kept, no clean-up). A prefix ``y_<t`` ends *cleanly* when
its decode does not end in U+FFFD (an unfinished UTF-8 character) and is a prefix of the whole completion's decode;
consecutive tokens are grouped until the prefix ends cleanly, so a group is the shortest run of tokens that ends at
a clean boundary: one token, or the few tokens of a multi-byte character (with byte-level vocabularies a run can
span two characters when a token ends one and starts the next). The amateur reads its prompt followed by
``encode_A(text of group)`` for each group in turn (its own tokenizer, no special tokens added): every clean expert
boundary is an amateur token boundary by construction. The amateur's tokenization is its own *within* a group, cut
at the expert's boundaries between groups (where the amateur would merge across one, it reads a non-canonical but
text-equal sequence). A final expert EOS is not read as text. **One teacher-forced amateur pass** per trajectory
reads this sequence (batched, as the id path): its next-token distribution at each boundary and along each group's
tokens, never a pass per prefix. Encoding piece by piece needs a tokenizer that adds nothing to a piece:
:func:`check_piecewise` refuses one that prepends a space to each piece (SentencePiece with a dummy prefix) or
strips a lone token's space.

**Step classes** (recorded per step, one letter of :data:`CODES`):

- ``s`` *skipped*: ``y_<t`` ends mid-character (no amateur boundary there). Not scored, never kept; its ``kl``,
  entropies and agreement are recorded as null.
- ``a`` *aligned*: ``y_t`` is a group of its own and the amateur encodes its text as one token; and the EOS step
  (``y_T`` an expert EOS id; see the EOS class below).
- ``m`` *marginalised*: ``y_t`` is a group of its own and the amateur encodes its text as ``m >= 2`` tokens
  ``u_1..u_m``.
- ``p`` *approximated*: ``y_t`` opens a multi-token character group (or its text is empty or unfinished): the
  pushforward alone is used.

**The amateur's distribution over V_E.** A fixed first-token map ``M: V_A -> V_E`` (:func:`build_vocab_map`):
``M(u)`` = the expert token with the same raw token string and the same text if there is one (a *twin*: the same
token, partial UTF-8 bytes of two byte-level vocabularies included), else the first id of
``encode_E(text of u)``; the amateur's EOS ids (tokenizer and generation config) map to an expert EOS id (their
twin when that is one, else the expert tokenizer's EOS). Unmapped (their mass is dropped and counted): special
tokens without a twin, tokens without text, tokens whose text is not valid alone (an unfinished UTF-8 character
without a twin). At a scored step, with ``p_A`` the amateur's next-token distribution at the boundary,

    q_A(e) = sum_{u : M(u) = e} p_A(u)                                (the pushforward)

and at an aligned or marginalised step the amateur's exact probability of its own tokenization of ``y_t``'s
text, ``P = prod_i p_A(u_i | boundary, u_<i)`` (read from the same pass), is moved from ``M(u_1)`` (or from the
dropped mass when ``u_1`` is unmapped) to ``y_t``: the part of ``u_1``'s mass that continues into ``y_t``'s
text along the amateur's tokenization (a no-op when ``m = 1`` and ``M(u_1) = y_t``). **The EOS class.** An
expert may stop on any of its EOS ids (tokenizer and generation config, e.g. ``<|im_end|>`` and ``<|endoftext|>``),
and for the amateur they are one outcome, ending here: at the EOS step, ``q_A``'s mass on every expert EOS id is
moved to ``y_T`` (a no-op with one EOS id). Then ``q_A`` is renormalised
over the mapped mass and floored, ``q_A <- (1 - FLOOR) q_A + FLOOR / |V_E|`` with :data:`FLOOR` ``= 1e-6``, so
every log is finite.

**The selection KL** is then ``KL(p_E || q_A)`` over the expert's vocabulary (its output rows): the expert's
next-token distribution against the amateur's first-token distribution pushed onto the expert's vocabulary.
It is exactly the id path's KL when the tokenizers coincide. Labels are :func:`contrast.reduce_step` of the
expert's logits and ``log q_A`` unchanged (ids in ``V_E``), so records and training are the id path's.

**Equality fast path.** When ``M`` is a bijection between the two tokenizers' ids (every token has a twin: one
tokenizer, perhaps with permuted ids) the text of ``y_<t`` is exactly the amateur's twin sequence at every
position, so the alignment is the identity (every step aligned, mid-character ones too) and the amateur's
*logits* are gathered into expert order, with no exp/scatter/log and no floor: the text path then gives the id
path's kept steps, labels and KL bit for bit (a test holds it to that).

Shapes: ``N`` scored steps, ``R_A`` the amateur's output rows, ``V_E`` the compared expert width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .invariant import deterministic_scatter
from .utils import InputError

logger = logging.getLogger(__name__)

FLOOR = 1e-6  # q_A <- (1 - FLOOR) q_A + FLOOR / |V_E|: every expert token keeps some amateur mass
REPLACEMENT = "\ufffd"  # what a decode shows for an unfinished UTF-8 character
ALIGNED, MARGINALISED, APPROXIMATED, SKIPPED = "a", "m", "p", "s"
CODES = {ALIGNED: "aligned", MARGINALISED: "marginalised", APPROXIMATED: "approximated", SKIPPED: "skipped"}
_DECODE = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text of each id decoded alone (special tokens kept, no clean-up)."""
    return list(tokenizer.batch_decode([[int(i)] for i in ids], **_DECODE)) if len(ids) else []


def check_piecewise(tokenizer: Any, role: str) -> None:
    """Raise :class:`InputError` unless the tokenizer encodes pieces of text faithfully, as the text path needs: it
    encodes a text piece by piece and reads each token's text decoded alone. Three probes, each a way a tokenizer
    fails this: encoding adds special tokens or changes the text (``"a b"`` round trip); a SentencePiece
    tokenizer that prepends a space to every piece (``encode("a") + encode("b")`` decodes as ``"a b"``, not
    ``"ab"``; its decoder strips the space from a whole text, so the round trip alone passes); a decoder that
    strips a lone token's leading space (the tokens of ``"a b"`` decoded one by one do not join to ``"a b"``)."""
    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    probes = (("a b", tokenizer.decode(encode("a b"), **_DECODE), "a prefix space or special tokens are added"),
              ("ab", tokenizer.decode(encode("a") + encode("b"), **_DECODE),
               "pieces encoded one by one each get a prefix space"),
              ("a b", "".join(token_texts(tokenizer, encode("a b"))),
               "tokens decoded one by one lose their leading spaces"))
    for want, got, why in probes:
        if got != want:
            raise InputError(f"the {role}'s tokenizer ({type(tokenizer).__name__}) cannot encode text piece by "
                             f"piece: {want!r} comes back as {got!r} ({why}); the text path (--amateur-tokens "
                             f"text) cannot use it: choose an amateur sharing the expert's tokenizer (the id "
                             f"path), or one whose tokenizer adds no prefix space (byte-level BPE as in GPT-2, "
                             f"Llama 3, Qwen and SmolLM; Gemma's SentencePiece)")


# ---------------------------------------------------------------------------------------------------------------
# The first-token map M: V_A -> V_E


@dataclass(frozen=True)
class VocabMap:
    """``M`` as a tensor, and what the text path needs to know about it."""

    first: torch.Tensor  # [R_A] long: M(u), -1 where unmapped
    expert_width: int  # V_E: columns of q_A (the expert's output rows; the common width on the fast path)
    gather: torch.Tensor | None  # [V_E] long: the amateur id of each expert id (fast path), else None
    unmapped: int  # amateur tokenizer ids without an image
    twins: int  # amateur ids mapped to the same token of the expert

    @property
    def fast(self) -> bool:
        return self.gather is not None


def _twins(expert_tokenizer: Any, amateur_tokenizer: Any, a_text: dict[int, str], expert_rows: int
           ) -> dict[int, int]:
    """Amateur id -> expert id of the same raw token string with the same decoded text."""
    ve = expert_tokenizer.get_vocab()
    cand = [(u, ve[s]) for s, u in amateur_tokenizer.get_vocab().items()
            if u in a_text and s in ve and ve[s] < expert_rows]
    e_text = token_texts(expert_tokenizer, [e for _, e in cand])
    return {u: e for (u, e), text in zip(cand, e_text) if text == a_text[u]}


def build_vocab_map(expert_tokenizer: Any, amateur_tokenizer: Any, *, expert_rows: int, amateur_rows: int,
                    amateur_eos: Sequence[int], expert_eos: Sequence[int] = ()) -> VocabMap:
    """``M: V_A -> V_E`` (see the module doc): twins first (but an amateur EOS id whose twin is not one of
    ``expert_eos`` or the expert tokenizer's EOS), then the amateur's EOS ids to the expert tokenizer's EOS, then
    the first expert token of each remaining token's text (one batched encode). ``*_rows``: output rows."""
    a_ids = sorted(i for i in amateur_tokenizer.get_vocab().values() if i < amateur_rows)
    a_text = dict(zip(a_ids, token_texts(amateur_tokenizer, a_ids)))
    twins = _twins(expert_tokenizer, amateur_tokenizer, a_text, expert_rows)
    special = {int(i) for i, t in getattr(amateur_tokenizer, "added_tokens_decoder", {}).items()
               if getattr(t, "special", False)}
    eos_e = expert_tokenizer.eos_token_id
    ends = {int(i) for i in expert_eos} | ({int(eos_e)} if eos_e is not None else set())
    first = torch.full((amateur_rows,), -1, dtype=torch.long)
    todo = []
    for u in a_ids:
        if u in twins and (u not in amateur_eos or twins[u] in ends or eos_e is None):
            first[u] = twins[u]
        elif u in amateur_eos and eos_e is not None:
            first[u] = int(eos_e)
        elif u not in special and a_text[u] and REPLACEMENT not in a_text[u]:
            todo.append(u)
    if todo:
        enc = expert_tokenizer([a_text[u] for u in todo], add_special_tokens=False)["input_ids"]
        for u, ids in zip(todo, enc):
            if len(ids) and ids[0] < expert_rows:
                first[u] = int(ids[0])
    e_ids = {i for i in expert_tokenizer.get_vocab().values() if i < expert_rows}
    gather = _fast_gather(twins, set(a_ids), e_ids, expert_rows, amateur_rows)
    width = int(gather.numel()) if gather is not None else expert_rows
    return VocabMap(first, width, gather, int((first[a_ids] < 0).sum()) if a_ids else 0, len(twins))


def _fast_gather(twins: dict[int, int], a_ids: set[int], e_ids: set[int], expert_rows: int, amateur_rows: int
                 ) -> torch.Tensor | None:
    """The equality fast path's ``[V_E]`` gather index (expert id -> amateur id), or None when ``M`` is not a
    bijection of the tokenizers' ids. Output rows beyond both tokenizers (padding) map to themselves."""
    if len(twins) != len(a_ids) or set(twins.values()) != e_ids or len(e_ids) != len(a_ids) or a_ids != e_ids:
        return None
    width = min(expert_rows, amateur_rows)
    gather = torch.arange(width)
    for u, e in twins.items():
        if e < width:
            gather[e] = u
    return gather


# ---------------------------------------------------------------------------------------------------------------
# Alignment of one trajectory


@dataclass
class Alignment:
    """How the amateur reads one trajectory (``T`` expert steps).

    ``ids``: the amateur's tokens of the completion's text, read after its prompt; per step ``t``: ``codes[t]``
    (:data:`CODES`), ``at[t]`` the amateur tokens before the step's boundary (-1 when skipped) and ``paths[t]``
    the amateur's tokens ``u_1..u_m`` of ``y_t``'s text (aligned and marginalised steps; empty otherwise).
    """

    ids: list[int]
    codes: str
    at: list[int]
    paths: list[tuple[int, ...]] = field(default_factory=list)

    def needed(self) -> int:
        """How many of ``ids`` the amateur's pass must read: a boundary's state is read after ``ids[:at]`` and a
        path's tokens ``u_i`` after ``u_<i``."""
        return max([a + max(len(p) - 1, 0) for a, p in zip(self.at, self.paths) if a >= 0], default=0)


def identity_alignment(completion: Sequence[int], gather: torch.Tensor) -> Alignment:
    """The fast path's alignment: each expert token read as its twin, every step aligned."""
    ids = [int(gather[y]) for y in completion]
    return Alignment(ids, ALIGNED * len(ids), list(range(len(ids))), [(i,) for i in ids])


def clean_ends(prefixes: Sequence[str]) -> list[bool]:
    """``clean[k]``: the decode of ``y_<k`` (``prefixes[k]``) ends at a character boundary of the whole text
    (``prefixes[-1]``): not in U+FFFD and a prefix of it. ``prefixes[0]`` (nothing) is clean."""
    full = prefixes[-1]
    return [k == 0 or (not p.endswith(REPLACEMENT) and full.startswith(p)) for k, p in enumerate(prefixes)]


def align(completion: Sequence[int], expert_tokenizer: Any, amateur_tokenizer: Any, eos: set[int] | frozenset[int]
          ) -> Alignment:
    """The text path's alignment of one completion (see the module doc): groups of expert tokens ending at clean
    boundaries, each encoded by the amateur; a final expert EOS is aligned and not read as text."""
    y = [int(i) for i in completion]
    n = len(y) - 1 if y and y[-1] in eos else len(y)  # tokens read as text
    prefixes = list(expert_tokenizer.batch_decode([y[:k] for k in range(n + 1)], **_DECODE))
    clean = clean_ends(prefixes)
    full = prefixes[-1]
    starts = [k for k in range(n) if clean[k]]
    groups = list(zip(starts, starts[1:] + [n]))
    texts = [full[len(prefixes[s]):len(prefixes[e])] if clean[e] else full[len(prefixes[s]):] for s, e in groups]
    encs = amateur_tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    ids: list[int] = []
    codes: list[str] = []
    at: list[int] = []
    paths: list[tuple[int, ...]] = []
    for (s, e), enc in zip(groups, encs):
        enc = [int(i) for i in enc]
        single = e - s == 1 and clean[e] and len(enc) > 0
        codes.append((ALIGNED if len(enc) == 1 else MARGINALISED) if single else APPROXIMATED)
        at.append(len(ids))
        paths.append(tuple(enc) if single else ())
        codes += SKIPPED * (e - s - 1)
        at += [-1] * (e - s - 1)
        paths += [()] * (e - s - 1)
        ids += enc
    if n < len(y):  # the EOS step
        codes.append(ALIGNED if clean[n] else SKIPPED)
        at.append(len(ids) if clean[n] else -1)
        paths.append(())
    return Alignment(ids, "".join(codes), at, paths)


# ---------------------------------------------------------------------------------------------------------------
# The amateur's distribution over V_E


def pushforward(logp_amateur: torch.Tensor, first: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``q(e) = sum_{M(u)=e} p_A(u)`` (unnormalised) and the unmapped mass.

    ``logp_amateur`` ``[N, R_A]`` float32 log-probabilities, ``first`` ``[R_A]`` (``M``, -1 unmapped) ->
    ``q [N, width]``, ``dropped [N]``.
    """
    p = logp_amateur.exp()
    mapped = first >= 0
    with deterministic_scatter(p.device):  # in amateur-id order, as on the CPU
        q = p.new_zeros((p.shape[0], width)).index_add_(1, first[mapped], p[:, mapped])
    return q, p[:, ~mapped].sum(-1)


def amateur_logq(logp_amateur: torch.Tensor, first: torch.Tensor, width: int, targets: torch.Tensor,
                 path_first: torch.Tensor, path_logp: torch.Tensor, eos: torch.Tensor | None = None,
                 floor: float = FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """``log q_A`` over the expert's vocabulary at ``N`` scored steps, and the mass dropped at each.

    ``logp_amateur`` ``[N, R_A]`` at the boundaries; ``targets`` ``[N]`` the expert's tokens ``y_t``;
    ``path_first`` ``[N]`` each step's ``u_1`` (-1: no path, pushforward only); ``path_logp`` ``[N]``
    ``log P`` of its path (ignored without one); ``eos`` ``[K]`` the expert's EOS ids (a step whose target is one
    of them takes the mass of all of them: the EOS class). Returns ``log q_A`` ``[N, width]`` (rows sum to 1
    before the log) and the dropped mass ``[N]`` (unmapped ids, less what a path moved out of them).
    """
    q, dropped = pushforward(logp_amateur, first, width)
    has = path_first >= 0
    moved = torch.where(has, path_logp.exp(), torch.zeros_like(path_logp))
    src = torch.where(has, first[path_first.clamp(min=0)], torch.full_like(path_first, -1))
    rows = torch.arange(q.shape[0], device=q.device)
    from_mapped = src >= 0
    q[rows[from_mapped], src[from_mapped]] -= moved[from_mapped]
    q.clamp_(min=0.0)
    dropped = (dropped - torch.where(from_mapped, torch.zeros_like(moved), moved)).clamp(min=0.0)
    q[rows, targets] += moved
    if eos is not None and eos.numel() > 1:
        ending = torch.isin(targets, eos)
        q[rows[ending], targets[ending]] = q[rows[ending]][:, eos].sum(-1)
        others = eos[None, :] != targets[ending][:, None]  # [n_ending, K]: the EOS ids this step did not write
        q[rows[ending][:, None].expand_as(others)[others], eos[None, :].expand_as(others)[others]] = 0.0
    q = q / q.sum(-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    return torch.log((1.0 - floor) * q + floor / width), dropped


def alignment_summary(records: Sequence[dict]) -> dict[str, Any]:
    """Step counts per class over text-path sample records (their ``alignment`` codes) and the mean amateur mass
    dropped per scored step (``dropped_mass`` is a record's sum)."""
    codes = "".join(str(r.get("alignment", "")) for r in records)
    out: dict[str, Any] = {name: codes.count(code) for code, name in CODES.items()}
    scored = len(codes) - out["skipped"]
    dropped = sum(float(r.get("dropped_mass", 0.0)) for r in records)
    out["mean_dropped_mass"] = round(dropped / scored, 9) if scored else None
    return out
