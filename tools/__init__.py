"""Command-line tools for a user's own images: classify query images against a support folder
(`python -m tools.classify`), embed a folder of images into one .npz of features (`tools.embed`),
export the backbone to TorchScript and ONNX with its preprocessing (`tools.export`), and draw a
run's training curves and a results table (`tools.plot`). docs/own-images.md is their manual.

Each tool is a thin command over the project's own pieces (engine.checkpoint, eval.embed,
eval.classifiers, dataset.folder), so it computes exactly what the evaluation computes. Tools may
import every other part of the project; nothing imports tools.
"""
