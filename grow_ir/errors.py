"""One error hierarchy for grow-ir: every error says where (file, node, field) and why."""

from __future__ import annotations


class GrowError(Exception):
    """Root of every error grow-ir raises on bad input or an impossible request.

    The message is one paragraph: the place (file, node, field), what was expected and
    what was found. The command line prints it as is and exits with status 2.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        node: str | None = None,
        field: str | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.node = node
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(self.message)

    @property
    def place(self) -> str:
        """Where the error is, e.g. ``net.yaml: node 'stem', field 'out_channels'``."""
        parts = []
        if self.node is not None:
            parts.append(f"node '{self.node}'")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        where = ", ".join(parts)
        if self.file is not None:
            return f"{self.file}: {where}" if where else str(self.file)
        return where

    @property
    def message(self) -> str:
        """The one-paragraph message: place, reason, expected and found."""
        text = self.reason.rstrip(".")
        if self.expected is not None:
            text += f"; expected {self.expected}"
        if self.found is not None:
            text += f", found {self.found}"
        place = self.place
        return f"{place}: {text}." if place else f"{text}."

    def at(self, *, file: str | None = None, node: str | None = None) -> GrowError:
        """Return a copy of this error with the file and/or node filled in where unknown."""
        return self.replace(file=self.file or file, node=self.node or node)

    def replace(self, **changes: str | None) -> GrowError:
        """A copy of this error (same class) with some of its parts changed."""
        err = type(self).__new__(type(self))
        err.__dict__.update(self.__dict__)
        err.__dict__.update(changes)
        Exception.__init__(err, err.message)
        return err

    def __str__(self) -> str:
        return self.message


class SpecError(GrowError):
    """A spec, plan or weights file is malformed."""


class ShapeError(GrowError):
    """A node's inputs do not have the types its op requires."""


class VerifyError(GrowError):
    """A graph breaks an invariant of the IR (names, order, parameters, types)."""


class PassError(GrowError):
    """A growth pass cannot apply to the graph with the arguments given."""


class CheckFailed(GrowError):
    """A numerical check failed (function preservation, backend parity). Exit status 1."""
