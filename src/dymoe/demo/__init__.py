"""The demo: a caption-pretrained tiny LLaVA base (:mod:`.base`, :mod:`.captions`) and the assembly of the
``dymoe demo`` runs (:mod:`.plan`)."""
