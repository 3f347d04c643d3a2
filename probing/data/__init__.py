"""Real negation data: one record format, benchmark loaders and a rule-based negation generator.
(The synthetic negation world is `probing.synthetic`; it writes the same records.)

    records     NegationExample (the one format), MCQItem, RetrievalItem, FoilPair, RegionItem, CocoImage,
                DataError, LoadReport, Loaded (a list with .report)
    loaders     load_dataset (guesses the kind), load_ccneg (and write_ccneg, its layout), load_negbench_mcq,
                load_negbench_retrieval,
                load_sugarcrepe, load_valse_existence, load_coco_captions, load_coco_instances,
                load_negrefcocog
    generator   generate_negations (from COCO instances or NegBench object lists, with their captions)
    negations   load_negation_examples (any file that gives NegationExamples), describe_examples
    benchmarks  read_benchmark: every file the evaluator reads as probe captions, examples and benchmark items
                (what each kind can honestly give the layer measurements; imported from its module)

Importing this package is cheap: torch and open_clip are imported only by the functions that need
them (the CC-Neg `.pt` reader, the default tokenizer of the context-length check).
"""
from probing.data.ccneg import (
                                  CCNEG_EVAL_SIZE,
                                  default_eval_size,
                                  find_negation_cue,
                                  load_ccneg,
                                  split_rows,
                                  write_ccneg,
)
from probing.data.coco import load_coco_captions, load_coco_instances
from probing.data.foils import SUGARCREPE_FOLDS, load_sugarcrepe, load_valse_existence
from probing.data.generator import generate_negations
from probing.data.loaders import READERS, guess_kind, load_dataset
from probing.data.negations import NEGATION_KINDS, describe_examples, load_negation_examples
from probing.data.negbench import load_negbench_mcq, load_negbench_retrieval
from probing.data.negrefcocog import load_negrefcocog
from probing.data.reading import CaptionCut, TokenLimit, distinct_pairs, generation_artifact, load_image
from probing.data.records import (
                                  CocoImage,
                                  DataError,
                                  FoilPair,
                                  Loaded,
                                  LoadReport,
                                  MCQItem,
                                  NegationExample,
                                  RegionItem,
                                  RetrievalItem,
)

__all__ = [
    # records
    "NegationExample", "MCQItem", "RetrievalItem", "FoilPair", "RegionItem", "CocoImage", "DataError", "LoadReport",
    "Loaded",
    # real data
    "load_dataset", "guess_kind", "READERS", "load_ccneg", "split_rows", "CCNEG_EVAL_SIZE", "default_eval_size",
    "write_ccneg", "find_negation_cue",
    "load_negbench_mcq", "load_negbench_retrieval", "load_sugarcrepe", "load_valse_existence", "SUGARCREPE_FOLDS",
    "load_coco_captions", "load_coco_instances", "load_negrefcocog", "load_image", "TokenLimit", "CaptionCut",
    "distinct_pairs", "generation_artifact",
    # rule-based generator, and negation examples from any file
    "generate_negations", "load_negation_examples", "describe_examples", "NEGATION_KINDS",
]
