"""What several test modules share: toy corpora, micro models, fixtures and servers.

A test module imports from here, never from another test module. A module-scoped fixture
defined here is bound into each test module that uses it (imported, or `name = module.name`),
so each module still gets its own instance.
"""
