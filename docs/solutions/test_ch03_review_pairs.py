"""Chapter 3, exercise 2: preference pairs from the review corpus, saved, reloaded, batched."""

import numpy as np

from alignment_np.data.collate import collate_preferences
from alignment_np.data.corpus import generate_reviews, sentiment_score
from alignment_np.data.preferences import create_preference_dataset, load_preferences, save_preferences
from alignment_np.data.tokenizer import CharTokenizer


def review_pairs(n_reviews, seed):
    """Pairs of two responses to the same prompt, the higher lexicon score chosen (ties skipped)."""
    by_prompt = {}
    for review in generate_reviews(n_reviews, seed):
        by_prompt.setdefault(review.prompt, []).append(review.response)
    prompts, chosen, rejected = [], [], []
    for prompt, responses in sorted(by_prompt.items()):
        for a, b in zip(responses[::2], responses[1::2]):
            sa, sb = sentiment_score(prompt + a), sentiment_score(prompt + b)
            if sa != sb:
                prompts.append(prompt)
                chosen.append(a if sa > sb else b)
                rejected.append(b if sa > sb else a)
    return create_preference_dataset(prompts, chosen, rejected)


def test_review_pairs_roundtrip_and_batch(tmp_path):
    pairs = review_pairs(400, seed=3)
    assert len(pairs) > 20
    for p in pairs:
        assert sentiment_score(p.prompt + p.chosen) > sentiment_score(p.prompt + p.rejected)

    path = tmp_path / "reviews.jsonl"
    save_preferences(pairs, path)
    assert load_preferences(path) == pairs

    tok = CharTokenizer.from_text([p.prompt + p.chosen + p.rejected for p in pairs])
    batch = collate_preferences([p.prompt for p in pairs], [p.chosen for p in pairs],
                                [p.rejected for p in pairs], tok, block_size=64)
    targets, loss_mask, attention = batch["targets"], batch["loss_mask"], batch["attention_mask"]
    B = len(pairs)
    assert targets.shape[0] == 2 * B and loss_mask.shape == targets.shape
    for row in range(2 * B):
        pair = pairs[row % B]
        response = pair.chosen if row < B else pair.rejected
        counted = targets[row][loss_mask[row] == 1]
        assert tok.decode(counted, skip_special=False) == response + "<eos>"
        # Everything the row reads before the response is <bos> and the prompt.
        first = int(np.argmax(loss_mask[row]))  # the position that predicts the first response token
        assert tok.decode(batch["input_ids"][row, : first + 1], skip_special=False) == "<bos>" + pair.prompt
        assert attention[row].sum() == 1 + len(pair.prompt) + len(response)
