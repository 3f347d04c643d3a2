"""Text and image features: batched, trimmed, L2-normalised, and (images) cached on disk.

    encode.py    encode_tokens / encode_captions (token-budget batches, exact trimming) and encode_images
                 (every image feature of the toolkit, through the disk cache), eval_mode
    batching.py  token-budget batches: captions sorted by length, at most N tokens per forward pass
    cache.py     the on-disk image-feature cache, keyed by image tower and image
"""
