"""Hypothesis strategies shared by the location codec tests: coordinates in [0, 1] and valid boxes."""

from hypothesis import strategies as st

unit = st.floats(min_value=0, max_value=1, allow_nan=False, allow_infinity=False)


@st.composite
def boxes(draw):
    """A box xyxy in [0, 1] with its corners in order."""
    x1, x2 = sorted((draw(unit), draw(unit)))
    y1, y2 = sorted((draw(unit), draw(unit)))
    return (x1, y1, x2, y2)
