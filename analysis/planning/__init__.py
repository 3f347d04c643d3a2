"""From per-layer measurements to a layer plan.

    evidence.py   each block's excess over the null models, tested (Student's t, Bonferroni), bootstrap intervals
    selection.py  the rules that turn the evidence into a plan (window, prefix, topk, auto_rgn), with stability
    selectors.py  the simple selectors a reviewer names (raw Auto-RGN, Omni-NegCLIP's cosine, FIM, ...), for the
                  selector study
"""
