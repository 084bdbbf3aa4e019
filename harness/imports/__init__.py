"""Takes a model file harness did not train, gives an imported run: the file checked before
anything runs it (foreign), scored under its input contract (imported); and a run's
committed exports without its Keras model, checked against their records and benchmarked
as they are (committed).
"""
