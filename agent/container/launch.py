"""Engine side of create and exec. (Being written.)"""
