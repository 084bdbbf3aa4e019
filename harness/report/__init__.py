"""Takes record files, gives tables and pictures: finding and checking records (collect), the
comparison table and its Pareto fronts (table), the charts (plots), fully connected against
convolutional (versus), and the report (compare). Never imports TensorFlow or Keras.
"""
