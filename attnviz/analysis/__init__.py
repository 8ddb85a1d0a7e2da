"""The analysis: localisation and faithfulness per model and CAM method, and the attention read-out, measured.

The CBAM paper shows pictures in which CBAM's Grad-CAM covers the object
better than ResNet50's and SE's. attnviz's scenes come with true masks, so
here it is measured, with paired bootstrap intervals over the same scenes so
that a real difference between the models can be told from noise:

* top-1 accuracy, the pointing game, energy in the mask and mask IoU for every
  model x CAM method at layer4 and for Grad-CAM at every layer, on the test,
  unseen-glyph and two-object scenes (each CAM explains the true class), with
  RandomCAM at layer4 as the baseline and the masks' area share as chance;
* faithfulness (deletion / insertion AUC against a blurred image, ROAD) on the
  first scenes of the test sample; Score-CAM, which needs one forward pass per
  channel of layer4, only on the first test scenes when asked for (--scorecam N);
* the SE paper's excitation analysis for SE's and CBAM's channel gates, and
  how much CBAM's spatial attention at each block lies on the object.

The scenes are regenerated from their seed (``make_scene(0, split, index)``, the
built-in dataset's seed); nothing is read from data/.

    python -m attnviz.analyze                          # the default set; 28.5 min + 7.5 min (sanity) on 2 cores
    python -m attnviz.analyze --set NAME --quick       # about a minute: a handful of scenes, to try it out

Results go to ``<weights dir>/<set>/analysis/``: analysis.json, analysis.md and PNG plots,
which the app's Analysis tab shows. A quick run, or one that measures less than the default, goes to
``analysis-quick/`` or ``analysis-partial/`` beside it unless ``--out`` names a folder: it never replaces
the shipped results by accident.

Modules: ``config`` (what to measure; names and tables every other module shares), ``items`` (scenes as
the models see them, one pass of a batch), ``run`` (the measuring phases), ``faithfulness``, ``stats``
(accumulators and the JSON-ready summary), ``report`` (analysis.md, one function per section, and writing
the files), ``plots``, the sections ``knockout`` and ``sanity``, ``findings`` (plain-language findings from
the JSON), ``results`` (reading what a run wrote: all the app's Analysis tab needs) and ``cli``.
"""
