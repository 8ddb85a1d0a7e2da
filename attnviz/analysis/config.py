"""What the analysis measures, on how many scenes, and the names and tables every part of it shares."""

from __future__ import annotations

from dataclasses import dataclass

from attnviz.errors import AttnvizError
from attnviz.methods import CAM_METHODS
from attnviz.metrics import POINTING_TOLERANCE
from attnviz.models import TARGET_LAYERS
from attnviz.settings import SCORE_CAM_BATCH

FORMAT = 2  # 2: "spatial" per model (format 1 had one, CBAM's); read_result upgrades format 1
ANALYSIS_DIR = "analysis"
QUICK_DIR = "analysis-quick"  # --quick writes here unless --out says otherwise: never over analysis/
PARTIAL_DIR = "analysis-partial"  # likewise any run that measures less than the default
DATA_DIR = "analysis-data-{name}"  # a run on a folder of the user's images (--images): named after that folder
# The parts a run can leave out (they cannot run on its data), as the command's lines and the report name them
PART_TITLES = {"unseen": "unseen-glyph scenes", "pairs": "two-object scenes", "knockout": "knock-out section",
               "sanity": "sanity section"}
JSON_NAME = "analysis.json"
SKIP_LINES = 30  # skipped image files named one per line (command, report); the rest are counted
MARKDOWN_NAME = "analysis.md"
SCENE_SEED = 0  # the built-in dataset's seed (python -m attnviz.scenes generate, attnviz.train)
# The methods the shipped analysis was run with; methods added to the table since (Grad-CAM element-wise,
# KPCA-CAM, FEM) join the default when the analysis is re-run for them (``--methods`` adds them to any run).
DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam", "eigencam")
# Measured for localisation at layer4 in every run beside the methods (not for faithfulness, unless --methods names
# it): what a map of random channel weights on the real activations scores, a level above the area share's chance.
BASELINE = "randomcam"
PROFILE_CHANNELS = 64  # channels shown per block in the excitation figure
PROFILE_CLASSES = ("dog", "fish", "aeroplane", "flower")  # four classes far apart, like the SE paper's figure
PROFILE_MAX_CLASSES = 16  # classes whose channel profiles the result keeps (a 1000-class set: these)

# name -> (label, higher is better, shown in percent)
METRICS = {
    "accuracy": ("top-1 accuracy", True, True),
    "pointing": ("pointing game", True, True),
    "energy": ("energy in mask", True, False),
    "iou": ("mask IoU", True, False),
    "deletion": ("deletion AUC", False, False),
    "insertion": ("insertion AUC", True, False),
    "road_morf": ("ROAD most relevant first", False, False),
    "road_lerf": ("ROAD least relevant first", True, False),
    "road_combined": ("ROAD combined", True, False),
    "top2": ("classes found in the top-2", True, True),
}
LOCALISATION = ("pointing", "energy", "iou")
FAITHFULNESS = ("deletion", "insertion", "road_morf", "road_lerf", "road_combined")
PLOTS_BEFORE_EXCITATION = ("localisation", "layers", "pairs", "faithfulness", "curves")
PLOTS_AFTER_EXCITATION = ("specificity", "spatial", "knockout", "sanity", "sanity_independent")
SECTION_PLOTS = {"sanity": "sanity", "sanity_independent": "sanity"}  # plot -> the section it needs in the result
# Sections that can also run on their own over an existing analysis (--sections): name -> its module, which
# defines run_section(ctx, engine) (the result's entry result[name]), markdown(result, titles) (its part of the report)
# and PLOTS (plot name -> function of the result and a path). A new section is a module and a line here.
SECTIONS = {"knockout": "attnviz.analysis.knockout", "sanity": "attnviz.analysis.sanity"}
# Measured per scene and model at 64 px (see the README); all methods come from the same passes, so the
# scenes set the time: 37 passes per scene and model (the original, 18 cascade and 18 independent steps).
SANITY_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam")
SANITY_SCENES = 16


def sample_words(result: dict, count: int | None = None) -> str:
    """How the report and the plots name the main sample (``count`` of it, the sections' subset, when given):
    "test scenes" (the first ``count``), or the images of the user's folder (a random ``count`` of them)."""
    data = result.get("data")
    if not data:
        return "test scenes" if count is None else f"the first {count} test scenes"
    measured = len(data["measured"])
    if count is None or count >= measured:
        return "images" if count is None else f"{count} images (all measured)"
    return f"{count} of the images (a random subset, seed {data['seed']})"


def split_n(result: dict, split: str) -> int:
    """The number of scenes (images) a split's localisation was measured on (a run without true classes has no
    accuracy to read it from)."""
    if split in result["accuracy"]:
        return result["accuracy"][split]["n"]
    return next(iter(result["localisation"][split]["pointing"].values()))["n"]


def plot_files(result: dict) -> dict[str, str]:
    """Plot name -> file name, in the order the report shows them: one excitation plot per model that has
    channel attention (``excitation_<variant>``), the others once."""
    names = [*PLOTS_BEFORE_EXCITATION, *(f"excitation_{v}" for v in result.get("excitation", {})),
             *(n for n in PLOTS_AFTER_EXCITATION if n not in SECTION_PLOTS or result.get(SECTION_PLOTS[n]))]
    return {name: f"{name}.png" for name in names}




@dataclass
class AnalysisConfig:
    """What to measure on how many scenes; the defaults make the full run about half an hour
    on 2 CPU cores (28.5 min measured for the built-in set)."""

    val: int = 120  # val scenes that choose the IoU threshold
    test: int = 400
    unseen: int = 120
    pairs: int = 60  # two-object scenes; each gives two CAMs, one per class
    # Measured on 2 idle cores (ResNet50 and SE): about 0.4 s per scene and model for every CAM and its
    # localisation, 13 s per scene and model for the faithfulness passes, 200 s for Score-CAM.
    faithfulness: int = 24  # the first test scenes also get deletion / insertion and ROAD
    scorecam: int = 0  # the first test scenes also get Score-CAM at layer4 (2048 forward passes per model)
    methods: tuple[str, ...] = DEFAULT_METHODS  # at layer4
    layers: tuple[str, ...] = TARGET_LAYERS  # Grad-CAM at each
    steps: int = 10  # deletion / insertion: 10 % of the pixels per step
    blur_sigma: float = 10.0  # px at 224 (scaled to the input size): the baseline of deletion / insertion
    road_percentiles: tuple[int, ...] = (20, 40, 60, 80)
    # ROAD's imputation (a sparse solve, about 0.6 s of CPU per percentile and order) costs several times the
    # deletion / insertion passes: by default only Grad-CAM gets it, which buys more faithfulness scenes.
    road_methods: tuple[str, ...] = ("gradcam",)
    tolerance: float = POINTING_TOLERANCE  # px of the model's input
    threshold: float | None = None  # mask IoU threshold; None: chosen on the val scenes
    resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0  # bootstrap, tie-breaks and ROAD noise
    batch_size: int = 16
    scorecam_batch: int = SCORE_CAM_BATCH
    workers: int = 2  # processes for ROAD's imputation (scipy, one core each); 0 runs it inline
    variants: tuple[str, ...] | None = None  # None: every model of the set
    knockout_scenes: int = 200  # test scenes of the knock-out section (every stage of every gated model)
    knockout_value: str = "mean"  # what a switched-off gate outputs there: its mean, or 1 ("identity")
    sanity_scenes: int = SANITY_SCENES  # test scenes of the sanity section (randomisation test, every model)
    sanity_methods: tuple[str, ...] = SANITY_METHODS  # CAM methods it checks, at layer4

    def validate(self) -> None:
        from attnviz.knockout import KNOCKOUT_VALUES
        from attnviz.sanity import check_methods

        unknown = [m for m in self.methods if m not in CAM_METHODS or CAM_METHODS[m].kind == "perturbation"]
        if unknown:
            choices = ", ".join(k for k, m in CAM_METHODS.items() if m.kind != "perturbation")
            raise AttnvizError(
                f"unknown CAM method {unknown[0]!r} for --methods; choose from {choices} "
                f"(Score-CAM has its own --scorecam count)"
            )
        if not self.methods:
            raise AttnvizError("--methods needs at least one CAM method")
        bad_layers = [layer for layer in self.layers if layer not in TARGET_LAYERS]
        if bad_layers:
            raise AttnvizError(f"unknown layer {bad_layers[0]!r}; choose from {', '.join(TARGET_LAYERS)}")
        counts = {
            "val": self.val,
            "test": self.test,
            "unseen": self.unseen,
            "pairs": self.pairs,
            "faithfulness": self.faithfulness,
            "scorecam": self.scorecam,
        }
        counts["knockout-scenes"] = self.knockout_scenes
        counts["sanity-scenes"] = self.sanity_scenes
        check_methods(self.sanity_methods)
        if self.knockout_value not in KNOCKOUT_VALUES:
            raise AttnvizError(f"--knockout-value must be one of {', '.join(KNOCKOUT_VALUES)}")
        negative = [k for k, v in counts.items() if v < 0]
        if negative:
            raise AttnvizError(f"--{negative[0]} must be 0 or more")
        if self.test < 1:
            raise AttnvizError("--test must be at least 1: the test scenes are the main sample")
        if self.faithfulness > self.test or self.scorecam > self.test:
            raise AttnvizError("--faithfulness and --scorecam take the first test scenes: keep them at most --test")
        if self.threshold is None and self.val < 1:
            raise AttnvizError("choosing the IoU threshold needs val scenes: give --val 1 or more, or --threshold")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise AttnvizError("--threshold must be in (0, 1]")
        if self.steps < 2:
            raise AttnvizError("--steps must be at least 2")
        outside = [m for m in self.road_methods if m not in self.methods]
        if outside:
            raise AttnvizError(f"--road-methods must be among --methods; {outside[0]!r} is not")
        if not self.road_percentiles or any(not 0 < p < 100 for p in self.road_percentiles):
            raise AttnvizError("--road-percentiles must lie between 0 and 100")
        if not 0 < self.confidence < 1 or self.resamples < 10:
            raise AttnvizError("--confidence must be in (0, 1) and --resamples at least 10")
        if self.batch_size < 1 or self.scorecam_batch < 1 or self.workers < 0:
            raise AttnvizError("--batch-size and --scorecam-batch must be at least 1, --workers 0 or more")


QUICK = {
    "val": 6,
    "test": 6,
    "unseen": 3,
    "pairs": 3,
    "faithfulness": 2,
    "scorecam": 0,
    "knockout_scenes": 3,
    "sanity_scenes": 2,
    "steps": 4,
    "resamples": 200,
    "workers": 0,
}


@dataclass(frozen=True)
class CamConfig:
    method: str
    layer: str

    @property
    def key(self) -> str:
        return f"{self.method}@{self.layer}"

    @property
    def label(self) -> str:
        label = CAM_METHODS[self.method].label
        return label if self.layer == "layer4" else f"{label} ({self.layer})"

    @classmethod
    def parse(cls, key: str) -> CamConfig:
        method, layer = key.split("@")
        return cls(method, layer)

    @classmethod
    def label_of(cls, key: str) -> str:
        """The label of a config key such as ``gradcam@layer3``."""
        return cls.parse(key).label
