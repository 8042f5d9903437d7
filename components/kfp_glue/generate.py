"""KFP components generated from the step declarations: the flat, typed signature KFP needs, with an
`Args:` docstring KFP turns into input descriptions, written out as source text.

KFP ships a lightweight component as its function's *source* (`inspect.getsource`) and rebuilds its
interface from the annotations in the container, so a signature set at run time would be lost there.
Generating the source itself (registered with `linecache`, which is where `inspect.getsource` looks)
keeps both sides exact. The generated body only forwards its arguments to a hand-written function in
`imgclf.components.kfp_glue.bodies`, which the image (or this virtualenv) provides.
"""
from __future__ import annotations

import linecache
import textwrap
from dataclasses import dataclass

from imgclf.components.lib.options import Option, union


@dataclass(frozen=True)
class Artifact:
    name: str
    annotation: str
    """Source text as KFP expects it, e.g. "Input[Dataset]" or "Output[HTML]"."""
    help: str


@dataclass(frozen=True)
class Wired:
    """A component input the pipeline wires from another task's output, not from an Options class."""
    name: str
    type: type | str
    """A type, or its annotation as source text ("List[str]")."""
    help: str

    @property
    def annotation(self) -> str:
        return self.type if isinstance(self.type, str) else self.type.__name__


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    doc: str
    artifacts: tuple[Artifact, ...] = ()
    options: tuple[str, ...] = ()
    """The steps (components/steps.py) whose options become inputs: one for a step's component, all of a
    pipeline's for its validate task."""
    wired: tuple[Wired, ...] = ()
    returns: str = ""
    """The return annotation as source text ("float", "NamedTuple('Gate', decision=str, summary=str)")."""
    returns_help: str = ""
    pipeline_only: bool = False
    """Only the options' pipeline parameters (the validate task); a step's component takes them all."""

    def declared(self) -> list[Option]:
        from imgclf.components.steps import pipeline_options

        return union(*pipeline_options(list(self.options)), pipeline_only=self.pipeline_only)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def option_help(o: Option) -> str:
    """What the KFP UI, the Vertex console and the compiled YAML show for an option."""
    allowed = "" if o.type is str and not o.choices else f" Allowed: {o.allowed()}."
    return _one_line(f"{o.help}.{allowed}")


def source(spec: ComponentSpec, body: str = "imgclf.components.kfp_glue.bodies") -> str:
    """The component function's source text."""
    opts = spec.declared()
    required = [o for o in opts if o.required]
    defaulted = [o for o in opts if not o.required]
    params = [f"{a.name}: {a.annotation}" for a in spec.artifacts]
    params += [f"{w.name}: {w.annotation}" for w in spec.wired]
    params += [f"{o.name}: {o.type.__name__}" for o in required]
    params += [f"{o.name}: {o.type.__name__} = {o.default!r}" for o in defaulted]
    args = [f"    {a.name}: {_one_line(a.help)}" for a in spec.artifacts]
    args += [f"    {w.name}: {_one_line(w.help)}" for w in spec.wired]
    args += [f"    {o.name}: {option_help(o)}" for o in [*required, *defaulted]]
    doc = _one_line(spec.doc) + "\n\nArgs:\n" + "\n".join(args)
    if spec.returns_help:
        doc += f"\n\nReturns:\n    {_one_line(spec.returns_help)}"
    ret = f" -> {spec.returns}" if spec.returns else ""
    return (f"def {spec.name}({', '.join(params)}){ret}:\n"
            + textwrap.indent(f'"""{doc}\n"""', "    ") + "\n"
            f"    _given = dict(locals())\n"
            f"    from {body} import {spec.name} as _body\n"
            f"    return _body(**_given)\n")


def build(spec: ComponentSpec, decorator, body: str = "imgclf.components.kfp_glue.bodies"):
    """The KFP component: the generated function, compiled where `inspect.getsource` finds its text."""
    text = source(spec, body)
    filename = f"<imgclf-component {spec.name} of {','.join(spec.options) or 'no options'}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace: dict = {"__name__": "imgclf.components.kfp_glue.wrappers"}
    exec(compile("from kfp.dsl import *\nfrom typing import *\n", filename, "exec", dont_inherit=True), namespace)  # what KFP puts above it in the container
    exec(compile(text, filename, "exec", dont_inherit=True), namespace)  # real annotations, as KFP reads them
    fn = namespace[spec.name]
    fn.__module__ = "imgclf.components.kfp_glue.wrappers"
    return decorator(fn)
