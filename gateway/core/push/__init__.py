"""Pure decisions on pushed data (D1, D5): where each pushed HES reading
(:mod:`.records`, with its typed fast path :mod:`.readings`) or meter-day
(:mod:`.days`, with its fast scanner :mod:`.scan`) goes, the per-record
form's canonical bytes (:mod:`.canonical`), how a Connect My Home booking is
split per operator (:mod:`.fanout`), who may push to which intake
(:mod:`.trust`) and how large a push may be (:mod:`.size`).

May import: the rest of :mod:`gateway.core` and the standard library only.
"""
