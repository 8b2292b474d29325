"""Evidence: the formats and proofs every reader relies on.

Answers: *what is in a segment file, who signed it, and has it changed?* The segment and
manifest byte layout (:mod:`.segfile`), the in-memory audio codecs (:mod:`.codec`),
hash chains and signatures (:mod:`.chain`), key files (:mod:`.keys`), the audit log
(:mod:`.audit`), and the readers built on them: :mod:`.verify` and :mod:`.export`.

May import: the shared basics at the top of ``recorder`` only. This is the code the
upstream shares with the box, so it never imports the box's write path, runtime or
``sync``.
"""
