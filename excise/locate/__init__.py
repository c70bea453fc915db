"""Locate: find the layers, positions, heads and neurons that hold a fact.

Every locator returns a :class:`Localization`, whose ``.top(k)`` gives the addressed components
(:mod:`excise.components`) that the editors in :mod:`excise.edit` accept.
"""
