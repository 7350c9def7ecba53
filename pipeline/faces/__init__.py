"""Face restoration: detect faces on the input, restore each aligned 512x512 crop (GFPGAN / RestoreFormer /
opt-in CodeFormer), paste them into the super-resolved output through a soft mask.

    FaceStage(engine).prepare(rgb_float, options, on_progress) -> PreparedFaces
    FaceStage(engine).paste(output_uint, prepared, scale) -> list[FaceReport]
    FaceStage(engine).status() -> dict

Modules: detect (MTCNN / optional RetinaFace), align (landmarks -> FFHQ template, pure numpy),
restore (networks and backends), paste (mask, colour match, blend; pure numpy), stage (the two calls).
"""

from pipeline.faces.stage import FaceStage, PreparedFace, PreparedFaces

__all__ = ["FaceStage", "PreparedFace", "PreparedFaces"]
