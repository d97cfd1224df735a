"""SAMora stage 1: self-supervised pretext tasks that train one LoRA expert each, and their teachers.

Teachers (kind "teacher"): simclrv2_resnet (image level), mae_vit (patch level).
Pretext tasks (kind "pretext"): simclrv2 (image), mae (patch), denoise (pixel).
"""

from samora_kit.api import hookimpl

from . import denoise, mae, simclrv2, teacher_mae, teacher_simclrv2
from .mae import MAEPretext, MAEPretextConfig, build_mae_pretext, patch_alignment_problem
from .simclrv2 import SimCLRv2Pretext, SimCLRv2PretextConfig, build_simclrv2_pretext
from .teacher_mae import MAETeacher, MAETeacherConfig, build_mae_teacher
from .teacher_simclrv2 import SimCLRv2Teacher, SimCLRv2TeacherConfig, build_simclrv2_teacher

__all__ = ["MAEPretext", "MAEPretextConfig", "MAETeacher", "MAETeacherConfig", "SimCLRv2Pretext",
           "SimCLRv2PretextConfig", "SimCLRv2Teacher", "SimCLRv2TeacherConfig", "build_mae_pretext",
           "build_mae_teacher", "build_simclrv2_pretext", "build_simclrv2_teacher"]

# Each module listed here exposes `register(registry)`; a new task or teacher adds its module to this tuple.
COMPONENT_MODULES = (
    teacher_simclrv2,
    teacher_mae,
    simclrv2,
    mae,
    denoise,
)


@hookimpl
def samora_kit_register(registry) -> None:
    for module in COMPONENT_MODULES:
        module.register(registry)


@hookimpl
def samora_kit_check_recipe(recipe, backbone) -> list[str]:
    """An MAE teacher sees the backbone's images, in patches that are whole multiples of the backbone's token
    cells: the mae task pairs their tokens position by position (the backbone's averaged per patch)."""
    problems = []
    for i, entry in enumerate(getattr(recipe, "experts", [])):
        teacher = entry.teacher
        if not isinstance(teacher, MAETeacherConfig):
            continue
        if teacher.image_size != backbone.image_size:
            problems.append(f"experts.{i}.teacher.image_size = {teacher.image_size}: the backbone reads "
                            f"{backbone.image_size}-px images and the mae task pairs teacher and backbone tokens "
                            f"position by position; set it to {backbone.image_size}")
        problem = patch_alignment_problem(teacher.patch_size, backbone.image_size, backbone.embed_stride)
        if problem:
            problems.append(f"experts.{i}.teacher.patch_size = {teacher.patch_size}: {problem}")
    return problems
