"""The review site (``doit review``) and the studio (``doit studio``): every story in front of
the eyes, and the steering functions behind buttons.

Layer: **steer**.
"""
