"""Niu et al.'s multi-scale, multi-modal tagger: pooled backbone stages fused into one visual vector, a textual
vector from user tags, label quantity prediction (Sec. III, Fig. 2 and 4, Algorithm 1)."""
