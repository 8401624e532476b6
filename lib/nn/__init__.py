"""Network building blocks shared by several model folders (the ResNet stages).
"""
