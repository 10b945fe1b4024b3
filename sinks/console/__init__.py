"""The operator console: the 311 operators' and departments' screen, served under ``/console``.

It reads the case store (the system of record) and acts only through the pipeline's own doors:
an operator's re-classification, re-route, merge or split is an operator command on the
contacts path (applied by the normalizer in order with the request's own contacts), a status
change goes on the status topic, an answer to a resident on the resident's outbound topic.
"""
