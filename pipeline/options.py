"""What to do to one image: the restore options, declared once, with their constraints and descriptions.

`RestoreOptionFields` is the one home of every option. Everything else is derived from it:
    RestoreOptions       what Restorer.restore takes (frozen; validated when made, so a scale < 1 or a
                         quality of 0 never reaches the pipeline)
    daemon Settings      inherits the fields: the defaults, the TOML keys, RESTORER_* variables and flags
    daemon Preset        the same fields, each optional (a preset overrides some of them)

`model` is a chain: the models run in order, each on the previous one's output with its own tiling (e.g.
a 1x JPEG-artefact remover, then a 4x upscaler); faces are pasted last, into the final result. One id is
the one-step chain. Written as a list (`model = ["A", "B"]`), or as text with commas ("A,B": environment
variables and flags), normalised to a tuple either way. `models` is accepted as another name for the key
(the plural reads naturally for a chain); giving both is refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_serializer, model_validator

from pipeline.types import DEFAULT_MODEL, ColourMode, OutputFormat


def model_chain(value: Any) -> Any:
    """ "A", "A,B" or ["A", "B"] -> ("A", "B"); anything else is left for the type check to refuse."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


ModelChain = Annotated[tuple[str, ...], BeforeValidator(model_chain), Field(min_length=1)]


def models_as_model(data: Any) -> Any:
    """A before-validator for every model with the options' fields: `models = [...]` means `model`."""
    if isinstance(data, dict) and "models" in data:
        if "model" in data:
            raise ValueError("give `model` or `models` (the same option), not both")
        data = {("model" if key == "models" else key): value for key, value in data.items()}
    return data


class RestoreOptionFields(BaseModel):
    """The restore options, each with its default, bounds and description (one home; see the module)."""

    model: ModelChain = Field(
        (DEFAULT_MODEL,),
        description="model id, or ids run in order (a chain, e.g. a 1x restorer then a 4x upscaler; "
        "see `restorer weights`)",
    )
    scale: float = Field(
        4.0, description="output scale, any S >= 1 (the network's scale, then a high-quality resize)", ge=1
    )
    max_output_megapixels: float | None = Field(
        None, description="cap the output size in megapixels (lowers the scale and says so)", gt=0
    )
    denoise_strength: float | None = Field(
        None, description="0..1, for models that take it (realesr-general-x4v3 with its wdn twin)", ge=0, le=1
    )
    faces: bool = Field(True, description="restore faces (GFPGAN) when face weights are installed")
    face_model: str = Field(
        "auto",
        description="auto (the best built-in one present), GFPGANv1.4, GFPGANv1.3, RestoreFormer, CodeFormer "
        "(opt-in), or the id of your own face model file in the weights folder (its file stem)",
    )
    face_strength: float = Field(1.0, description="0..1 blend of restored and upscaled face", ge=0, le=1)
    codeformer_fidelity: float = Field(
        0.5,
        description="CodeFormer's fidelity weight w, 0..1: 0 trusts the model's face prior most, 1 keeps "
        "closest to the photo",
        ge=0,
        le=1,
    )
    min_face_size: int = Field(
        16, description="faces smaller than this (input pixels) are left to the upscaler", ge=1
    )
    output_format: OutputFormat = Field("same", description="output file format (same: the input's)")
    quality: int = Field(95, description="JPEG/WebP quality 1-100", ge=1, le=100)
    strip_gps: bool = Field(False, description="remove GPS position from the output's metadata")
    colour_mode: ColourMode = Field(
        "auto", description="auto: black-and-white and toned RGB photos stay so; colour: always colour"
    )

    @field_serializer("model", when_used="json")
    def _one_model_as_its_id(self, chain: tuple[str, ...]) -> str | list[str]:
        """In JSON (stored jobs, the API, public settings) one model stays its id, as before chains."""
        return chain[0] if len(chain) == 1 else list(chain)


class RestoreOptions(RestoreOptionFields):
    """What to do to one image (see RestoreOptionFields for each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    _models_alias = model_validator(mode="before")(models_as_model)

    def replace(self, **changes: Any) -> RestoreOptions:
        """A copy with `changes`, validated like a new one."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (one model as its id, a chain as a list): what a job stores and a Ray call
        carries."""
        return self.model_dump(mode="json")
