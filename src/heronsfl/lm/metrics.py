"""The E2E NLG challenge metrics, from the packages that implement them.

The challenge's script (tuetschek/e2e-metrics) takes BLEU and NIST from NIST's mteval and
METEOR, ROUGE-L and CIDEr from the MS-COCO caption scripts. Here:

- BLEU: sacrebleu (`corpus_bleu`, 13a tokenization = mteval-v13a's), reported on 0..100.
- NIST: nltk (`corpus_nist`, n = 5, mteval's default) on the same 13a tokens (n is capped
  at the longest hypothesis, where nltk would divide by zero).
- METEOR, ROUGE-L, CIDEr: pycocoevalcap, the pip release of the MS-COCO scripts themselves
  (METEOR 1.5 with its paraphrase tables runs in Java; ROUGE-L with beta = 1.2 over multiple
  references; CIDEr with document frequencies from the test references).

Every metric scores one output per MR against all of that MR's references. METEOR needs `java`
on PATH: without it METEOR is left out (and a warning says so) rather than reported as 0.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def _tokenize(text: str) -> str:
    """mteval-v13a tokenization (what BLEU sees), so every metric reads the same tokens."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text.strip())


def score_e2e(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus scores of one hypothesis per MR against that MR's references.

    Args:
        hypotheses: The system output for each MR.
        references: The references of each MR (any number, at least one).

    Returns:
        {"bleu", "nist", "meteor", "rouge_l", "cider"}: BLEU on 0..100 (sacrebleu's scale), the
        others on their usual scales (METEOR and ROUGE-L 0..1, NIST and CIDEr unbounded).

    Raises:
        ValueError: The lists differ in length, are empty, or an MR has no reference.
    """
    import sacrebleu
    from nltk.translate.nist_score import corpus_nist
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(
            f"need one hypothesis per MR: got {len(hypotheses)} hypotheses for "
            f"{len(references)} reference groups"
        )
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every MR needs at least one reference")
    # sacrebleu reads references as streams; a shorter group is padded with None (ignored).
    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(list(hypotheses), streams).score  # type: ignore[arg-type]

    hyp_tok = [_tokenize(h) for h in hypotheses]
    ref_tok = [[_tokenize(r) for r in refs] for refs in references]
    hyp_words = [h.split() for h in hyp_tok]
    # nltk divides by the corpus's hypothesis n-gram count: cap n at the longest hypothesis
    # (no words at all: nothing matches, NIST is 0).
    n = min(5, max(len(h) for h in hyp_words))
    refs_words = [[r.split() for r in refs] for refs in ref_tok]
    nist = corpus_nist(refs_words, hyp_words, n=n) if n > 0 else 0.0

    # The COCO scorers take {id: [sentence]} dicts of whitespace-tokenized text.
    res = {i: [h] for i, h in enumerate(hyp_tok)}
    gts = dict(enumerate(ref_tok))
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {"bleu": float(bleu), "nist": float(nist), "rouge_l": float(rouge), "cider": float(cider)}
    if shutil.which("java") is not None:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor, _ = Meteor().compute_score(gts, res)
        out["meteor"] = float(meteor)
    else:
        logger.warning("no java on PATH: METEOR (the official 1.5 jar) is left out")
    return out
