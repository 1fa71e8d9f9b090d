"""Loading and saving models, and the one bridge between onnx-ir and onnx's C++ tools.

Weights stay where they are: external data is memory-mapped by onnx-ir, never copied into a
protobuf. The checker and shape inference see the graph with large initializers lifted out
(onnx-ir's `call_onnx_api`), so models over 2 GB need no special case anywhere else.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass, ShapeInferencePass

from edgepack import outputs
from edgepack.errors import EdgepackError, first_line

logger = logging.getLogger(__name__)

# Protobuf cannot serialize a message over 2 GiB; stay clear of it with a margin for the graph.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
_PROGRESS_BYTES = 256 * 2**20


def load(path: str | os.PathLike, *, check: bool = True) -> ir.Model:
    """Load an ONNX model; external weights stay memory-mapped.

    Refuses files that are missing, not ONNX, truncated, fail the checker, or whose external
    data would be read from outside the model's folder (a known attack on ONNX loaders).
    """
    path = Path(path)
    if not path.exists():
        raise EdgepackError(f"model file not found: {path}", hint="check the path")
    if not path.is_file():
        raise EdgepackError(f"{path}: is a directory, not an ONNX model file")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf raises several unrelated types for bad bytes
        raise EdgepackError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {first_line(exc)})",
            hint="the file may be truncated or not an .onnx file",
        ) from None
    if model.ir_version == 0 or not model.opset_imports:
        raise EdgepackError(
            f"{path}: not an ONNX model (no IR version or opset)",
            hint="the file may be corrupt or of another format",
        )
    _refuse_malformed(model, path)
    _refuse_escaping_external_data(model, path)
    outputs.add_input(path)
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            outputs.add_input(tensor.path, f"the external data file of the input {path}")
    if check:
        try:
            if has_external_data(model):  # by path: the file holds the graph, data is resolved
                onnx.checker.check_model(str(path))
            else:  # weights lifted out: by path would parse a second copy of every weight
                check_model(model)
        except (onnx.checker.ValidationError, ir.passes.PassError) as exc:
            raise EdgepackError(
                f"{path}: fails the ONNX checker: {first_line(exc)}",
                hint="fix the exporter, or run with --no-check to inspect it anyway",
            ) from None
    return model


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None,
         check: Callable[[Path], None] | None = None, rebase: bool = False) -> Path:
    """Write `model` atomically: a temporary folder beside `path`, then rename. The output must
    not be an input (see outputs.py); missing parent folders are created.

    Weights go to one data file `<name>.data` beside the model when they exceed the protobuf
    limit, when the model already had external data, or when `external_data=True`.
    `check(staged_path)` runs on the written files before they replace anything (raise to keep
    them out). With `rebase`, a model saved with external data then reads its weights from the
    written file (memory-mapped) and its in-memory copies are freed: one copy, not two, while
    `check` runs and after.
    """
    path = outputs.check_output(path)
    folder = path.parent if str(path.parent) else Path(".")
    threshold = 0 if external_data else 1024  # asked for: every weight; automatic: skip tiny ones
    if external_data is None:
        external_data = weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD or has_external_data(model)
    data_name = path.name + ".data"
    if external_data:
        _refuse_overwriting_own_weights(model, folder / data_name)
        outputs.check_output(folder / data_name, what="weights file")
    outputs.clean_stale_temps(folder)
    tmp = Path(tempfile.mkdtemp(prefix=outputs.temp_prefix(), dir=folder))
    rebased: list[ir.ExternalTensor] = []
    try:
        tmp_model = tmp / path.name
        with _progress(model) as callback:
            if external_data:
                ir.save(model, tmp_model, external_data=data_name, callback=callback,
                        size_threshold_bytes=threshold)
            else:
                _save_embedded(model, tmp_model)
        if rebase and external_data:
            rebased = _read_weights_from(model, tmp_model)
        if check is not None:
            check(tmp_model)
        if (tmp / data_name).exists():
            os.replace(tmp / data_name, folder / data_name)
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for tensor in rebased:  # the data file now lives beside `path`
        tensor.base_dir = folder.resolve()
    return path


_STREAM_MIN_BYTES = 1 << 20


def _save_embedded(model: ir.Model, path: Path) -> None:
    """One .onnx file holding every weight, written one tensor at a time.

    Protobuf merges a message field that appears twice and appends repeated fields, so the file is
    the model without its large initializers followed by one `ModelProto{graph{initializer}}`
    per large weight: parsers read it as one model. Serializing it whole would hold two more
    copies of the weights (the message and its bytes)."""
    import onnx

    large = {name: value for name, value in model.graph.initializers.items()
             if value.const_value is not None and value.const_value.nbytes >= _STREAM_MIN_BYTES}
    if not large:
        ir.save(model, path)
        return
    for name in large:
        model.graph.initializers.pop(name)
    try:
        head = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for value in large.values():
            model.graph.register_initializer(value)
    with open(path, "wb") as handle:
        handle.write(head)
        del head
        for value in large.values():
            piece = onnx.ModelProto()
            ir.serde.serialize_tensor_into(piece.graph.initializer.add(), value.const_value)
            handle.write(piece.SerializeToString())


def _read_weights_from(model: ir.Model, written: Path) -> list[ir.ExternalTensor]:
    """Swap the main graph's initializers for the ones just written to `written`'s data file."""
    import gc

    saved, swapped = ir.load(written), []
    for name, value in model.graph.initializers.items():
        new = saved.graph.initializers.get(name)
        if new is not None and isinstance(new.const_value, ir.ExternalTensor):
            value.const_value = new.const_value
            swapped.append(new.const_value)
    gc.collect()
    from edgepack.runtime import trim_memory

    trim_memory()
    return swapped


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write a file via a temporary file in the same folder, then rename: never half-written."""
    path = outputs.check_output(path)
    folder = path.parent if str(path.parent) else Path(".")
    outputs.clean_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix=outputs.temp_prefix(), dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_model(model: ir.Model, *, full_check: bool = False) -> None:
    """onnx.checker on the graph (with full shape inference when `full_check`)."""
    CheckerPass(full_check=full_check)(model)
    _forget_former_io(model)


def infer_shapes(model: ir.Model) -> ir.Model:
    """ONNX shape inference in place: fills value shapes and dtypes where they can be inferred.

    onnx-ir merges an inferred sequence or optional type as a tensor type (a SequenceConstruct
    output in an If branch became tensor(float), and ONNX Runtime then refuses the model): values
    that held a sequence/optional type, or that sequence/optional ops produce, keep their type."""
    before = {v: v.type for v in _all_values(model)}
    model = ShapeInferencePass()(model).model
    for value in _all_values(model):
        old = before.get(value)
        if isinstance(value.type, ir.TensorType) and (
                (old is not None and not isinstance(old, ir.TensorType))
                or (value.producer() is not None and value.producer().op_type in _NON_TENSOR_OPS)):
            value.type = old
    for graph in (model.graph, *model.graph.subgraphs()):  # an If yields what its branches yield
        for node in graph:
            if node.op_type == "If" and "then_branch" in node.attributes:
                branch = node.attributes["then_branch"].value
                for out, inner in zip(node.outputs, branch.outputs):
                    if inner.type is not None and not isinstance(inner.type, ir.TensorType):
                        out.type = inner.type
    _forget_former_io(model)
    return model


#: ops whose outputs are sequences or optionals, never tensors
_NON_TENSOR_OPS = frozenset({"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
                             "SplitToSequence", "SequenceMap", "Optional"})


def _all_values(model: ir.Model):
    for graph in (model.graph, *model.graph.subgraphs()):
        yield from graph.inputs
        for node in graph:
            yield from node.outputs


def _forget_former_io(model: ir.Model) -> None:
    """Work around an onnx-ir leak: its graph input/output lists count references in a Counter
    whose keys stay at zero after removal. onnx-ir's C-API bridge lists every initializer as an
    input for a moment, so without this each replaced weight would stay in memory for good."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for io_list in (graph.inputs, graph.outputs):
            counter = getattr(io_list, "_ref_counter", None)
            if counter is not None:
                for value in [v for v, n in counter.items() if n <= 0]:
                    del counter[value]


def weights_nbytes(model: ir.Model) -> int:
    return sum(t.nbytes for t in _tensors(model))


def release_weights(model: ir.Model) -> None:
    """Unmap every external weight (onnx-ir maps it again on the next read): the pages a pass or
    a session touched stop counting as this process's memory."""
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            release_tensor(tensor)


def release_tensor(tensor) -> None:
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # an array over the mapping is still alive: it stays mapped
            pass


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for t in _tensors(model))


def files_nbytes(path: str | os.PathLike, model: ir.Model | None = None) -> int:
    """Size on disk: the model file plus every external data file it reads."""
    path = Path(path)
    total = path.stat().st_size
    if model is not None:
        for data_file in {t.path for t in _tensors(model) if isinstance(t, ir.ExternalTensor)}:
            total += os.path.getsize(data_file)
    return total


def _tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor the model holds: the initializers of every graph and the tensors of every
    TENSOR/TENSORS attribute (Constant's and ConstantOfShape's `value`, any other), in subgraphs
    at any depth."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.is_ref() or attr.value is None:
                continue
            if attr.type == ir.AttributeType.TENSOR:
                yield attr.value
            elif attr.type == ir.AttributeType.TENSORS:
                yield from attr.value


def external_base_dir(model: ir.Model) -> str | None:
    """The folder a model's external data is read from (set by `load`), or None without any."""
    folders = {str(t.base_dir) for t in _tensors(model) if isinstance(t, ir.ExternalTensor)}
    if len(folders) > 1:  # never made by edgepack: one model is loaded from one file
        raise EdgepackError(f"the model reads external data from several folders ({', '.join(sorted(folders))})",
                            hint="save it with `edgepack.save` first")
    return folders.pop() if folders else None


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for t in _tensors(model))


def copy_model(model: ir.Model) -> ir.Model:
    """An independent deep copy (through protobuf) whose external data is still read from the
    original model's folder (a plain protobuf round trip would read it from the working folder)."""
    return from_proto(ir.serde.serialize_model(model), base_dir=external_base_dir(model))


def from_proto(proto: onnx.ModelProto, *, base_dir: str | None) -> ir.Model:
    """A model from a ModelProto made from one of ours: its external data read from `base_dir`."""
    model = ir.serde.deserialize_model(proto)
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            if base_dir is None:
                raise EdgepackError(f"tensor '{tensor.name}' reads external data from {tensor.location!r}, "
                                    "but the model has no folder to read it from; refused")
            tensor.base_dir = base_dir
    return model


def _refuse_escaping_external_data(model: ir.Model, path: Path) -> None:
    """Every external tensor must read a regular file inside the model's folder, within its size;
    then its reads are anchored there (absolute base_dir), whatever the working folder is."""
    base = path.parent.resolve()
    for tensor in _tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        where = f"{path}: tensor '{tensor.name}' reads external data from {tensor.location!r}"
        try:
            location = Path(tensor.location)
            target = (base / location).resolve()
            info = target.stat() if target.is_file() else None
        except (ValueError, OSError):  # NUL bytes, names too long
            raise EdgepackError(f"{where}, which is not a valid file name; refused",
                                hint="external data must be a relative path inside the model's folder") from None
        if location.is_absolute() or ".." in location.parts or not target.is_relative_to(base):
            raise EdgepackError(f"{where}, outside the model's folder; refused",
                                hint="external data must be a relative path inside the model's folder")
        if info is None:
            raise EdgepackError(
                f"{path}: tensor '{tensor.name}' needs external data file '{tensor.location}', "
                "which is missing",
                hint="copy the .data file next to the model",
            )
        if info.st_nlink > 1:
            raise EdgepackError(f"{where}, a file with {info.st_nlink} hard links; refused (a hard link can "
                                "bring any file into the model's folder)",
                                hint="copy the data file instead of linking it")
        offset, length, nbytes = tensor.offset or 0, tensor.length, tensor.nbytes
        if offset < 0 or (length is not None and length < nbytes) or offset + max(length or 0, nbytes) > info.st_size:
            raise EdgepackError(f"{where}: {nbytes} bytes at offset {offset} do not fit the tensor or "
                                f"the {info.st_size}-byte file; refused",
                                hint="the model and its data file do not belong together")
        tensor.base_dir = str(base)


_MAX_LOCATION = 1024


def _refuse_bad_embedded(tensor, path: Path) -> None:
    """An embedded tensor whose bytes do not match its shape and type (the checker does not look)."""
    proto = tensor._proto  # onnx-ir's wrapper keeps the TensorProto
    if any(d < 0 for d in proto.dims):
        raise EdgepackError(f"{path}: tensor '{tensor.name}' has a negative dimension {list(proto.dims)}",
                            hint="the file is corrupt")
    try:
        expected = tensor.nbytes
        if proto.HasField("raw_data"):
            got = len(proto.raw_data)  # one tensor's bytes at a time
        else:
            got = tensor.numpy().nbytes if tensor.size <= _STREAM_MIN_BYTES else expected
    except Exception as exc:  # an unknown data type, or typed fields that do not fit the shape
        raise EdgepackError(f"{path}: tensor '{tensor.name}' cannot be read ({type(exc).__name__}: "
                            f"{first_line(exc)})", hint="the file is corrupt") from None
    if got != expected:
        raise EdgepackError(f"{path}: tensor '{tensor.name}' holds {got} bytes, its shape and type need "
                            f"{expected}", hint="the file is corrupt")


def _refuse_malformed(model: ir.Model, path: Path) -> None:
    """Names that are not UTF-8 (protobuf hands them over as bytes, and nothing downstream can
    write them back), and external-data entries no file system or file can satisfy: NUL bytes,
    names over 1024 characters, offsets and lengths outside the data file."""
    def bad_name(what: str, name) -> EdgepackError:
        return EdgepackError(f"{path}: {what} {name!r} is not valid UTF-8",
                             hint="the file is corrupt, or was written by a broken exporter")

    graphs = [model.graph, *model.graph.subgraphs()]
    for graph in graphs:
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            if value.name is not None and not isinstance(value.name, str):
                raise bad_name("value", value.name)
            if value.type is not None and value.dtype == ir.DataType.UNDEFINED:
                raise EdgepackError(f"{path}: '{value.name}' has no element type (UNDEFINED)",
                                    hint="the file is corrupt, or was written by a broken exporter")
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for what, name in (("node", node.name), ("op type", node.op_type), ("domain", node.domain)):
            if name is not None and not isinstance(name, str):
                raise bad_name(what, name)
        for value in (*node.inputs, *node.outputs):
            if value is not None and value.name is not None and not isinstance(value.name, str):
                raise bad_name("value", value.name)
        for attr in node.attributes.values():
            if not isinstance(attr.name, str):
                raise bad_name("attribute", attr.name)
    for tensor in _tensors(model):
        if tensor.dtype == ir.DataType.UNDEFINED:
            raise EdgepackError(f"{path}: tensor '{tensor.name}' has no data type (UNDEFINED)",
                                hint="the file is corrupt, or was written by a broken exporter")
        if isinstance(tensor, ir.serde.TensorProtoTensor):
            _refuse_bad_embedded(tensor, path)
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        if "\x00" in location or len(location) > _MAX_LOCATION:
            raise EdgepackError(f"{path}: tensor '{tensor.name}' has an invalid external data location "
                                f"({'a NUL byte' if chr(0) in location else f'{len(location)} characters'})",
                                hint="external data must be a short relative file name")
        try:
            size = os.path.getsize(path.parent / location)
        except (OSError, ValueError):
            continue  # missing or outside: the next check names it
        offset, length = tensor.offset or 0, tensor.length
        if offset < 0 or (length is not None and length < 0) or offset + (length or 0) > size \
                or (length is not None and length != tensor.nbytes) or offset + tensor.nbytes > size:
            raise EdgepackError(f"{path}: tensor '{tensor.name}' reads bytes {offset}..{offset + (length or tensor.nbytes)} "
                                f"of '{location}', which holds {size} (it needs {tensor.nbytes})",
                                hint="the data file is truncated or does not belong to this model")


def _refuse_overwriting_own_weights(model: ir.Model, data_path: Path) -> None:
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor) and Path(tensor.path).resolve() == data_path.resolve():
            raise EdgepackError(
                f"saving would overwrite '{data_path}', which holds the input model's weights",
                hint="write the output to another file name (-o)",
            )


@contextlib.contextmanager
def _progress(model: ir.Model):
    """A progress bar for saving models with large weights; None (no callback) for small ones."""
    if weights_nbytes(model) < _PROGRESS_BYTES:
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc="saving weights", unit="tensor", leave=False, disable=None) as bar:

        def callback(tensor, info):
            bar.total = info.total
            bar.update()

        yield callback
